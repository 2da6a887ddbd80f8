"""Model loading: the BaseUnslothModel facade, the families' chat templates, the two backends and
where base weights come from."""
