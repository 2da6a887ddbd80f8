"""Write the synthetic sample (train.csv, test.csv) in the challenge's schema: `python data/sample/make_sample.py`.

Everything here was written for this repository; nothing comes from the challenge data.
The generator exists so that the sample has the shape that matters for tuning, measured on
real rows (aggregates only, see ../shared/reference/task.md):

* prompts of about 100 words: the nurse's self-introduction, a case with vitals,
  abbreviations and the odd typo, then one or two questions;
* clinicians' answers of about 110 words that open with "summary", restate the case in
  shorthand (age, parity, findings), then give the diagnosis and differentials,
  investigations and a plan; terse, in several personal styles;
* so that echoing the prompt scores ROUGE-L near 0.3 against the answer, as on real rows;
* the commercial-LLM columns (GPT4.0, LLAMA, GEMINI): long, generic and formatted.

Each condition has more findings, tests and steps than one answer uses; a row draws a
random subset in a random order, so answers to one condition differ as real clinicians'
do and validation rows cannot be recalled word for word from training rows.
Seeded: the same script writes byte-identical files.
"""
from __future__ import annotations

import csv
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20261126
N_TRAIN, N_TEST = 64, 8
HERE = Path(__file__).resolve().parent

COUNTIES = ["Kiambu", "Kakamega", "Uasin Gishu", "Nairobi", "Nakuru", "Meru", "Kisumu", "Machakos", "Bungoma",
            "Turkana", "Kilifi", "Nyeri", "Kisii", "Garissa", "Embu", "Migori", "Kericho", "Mombasa"]
LEVELS = ["Sub-county Hospitals and Nursing Homes", "Dispensaries and Private Clinics", "Health Centres",
          "County Hospitals", "National Referral Hospitals"]


@dataclass
class Condition:
    panel: str  # as the real files spell it: upper case, sometimes combined
    competency: str
    slots: dict  # slot name -> callable(rng) giving a value
    cases: list[str]  # the case's opening, with {slots}
    findings: list[tuple[str, str]]  # (as the nurse writes it, as the clinician restates it)
    questions: list[str]
    opening: list[str]  # the clinician's restatement of who the patient is, with {slots}
    dx: list[str]
    ddx: list[str]
    ix: list[str]
    mx: list[str]
    extras: list[str] = field(default_factory=list)  # more context the nurse may add


def age(lo, hi):
    return lambda rng: rng.randint(lo, hi)


def pick(*values):
    return lambda rng: rng.choice(values)


OBS, PAED, MED, SURG, CC = ("OBSTETRICS AND GYNAECOLOGY", "PAEDIATRICS", "INTERNAL MEDICINE", "SURGERY", "CRITICAL CARE")
MCH, CHILD, ADULT, CRIT, GEN = ("Maternal and Child Health", "Child Health", "Adult Health", "Critical Care", "General nursing")

CONDITIONS = [
    Condition(OBS, MCH, {"age": age(17, 38), "g": age(1, 5), "ga": age(30, 39), "sbp": age(160, 190), "dbp": age(105, 125)},
              ["A {age} year old G{g}P{gp} at {ga} weeks gestation came to the facility with", "A {age} yr old primigravida at {ga} weeks presents with"],
              [("severe headache for 2 days", "headache"), ("blurring of vision", "blurred vision"), ("BP of {sbp}/{dbp} mmHg on two readings", "bp {sbp}/{dbp}"),
               ("proteinuria 3+ on dipstick", "proteinuria 3+"), ("epigastric pain", "epigastric pain"), ("swelling of the face and hands", "facial oedema"),
               ("reduced fetal movements", "reduced fetal movements")],
              ["What is the diagnosis and how do I manage her?", "How should I manage this mother?", "What is the immediate management?"],
              ["{age}yr G{g}P{gp} at {ga}/40", "{age} year old G{g}P{gp} at {ga} weeks"],
              ["severe pre-eclampsia", "pre eclampsia with severe features"],
              ["gestational hypertension", "chronic hypertension with superimposed pre-eclampsia", "HELLP syndrome", "impending eclampsia"],
              ["FBC and platelets", "UECs", "LFTs", "urinalysis", "obstetric ultrasound", "coagulation profile", "CTG"],
              ["admit to labour ward", "MgSO4 4g IV loading and 10g IM (Pritchard regimen)", "nifedipine or hydralazine to bring bp below 160/110",
               "insert urinary catheter and monitor input and output", "monitor reflexes and respiratory rate for MgSO4 toxicity",
               "dexamethasone for lung maturity if below 34 weeks", "plan delivery once stable", "refer to a facility with theatre and NBU"],
              ["She has not been attending ANC regularly.", "No history of convulsions."]),
    Condition(OBS, MCH, {"age": age(20, 42), "g": age(2, 7), "mins": age(20, 90), "pr": age(110, 140), "sbp": age(70, 95)},
              ["A {age} year old P{gp} delivered at home {mins} minutes ago and is brought with", "A {age} yr old para {gp} delivered a live baby at the dispensary, after delivery she has"],
              [("heavy bleeding per vaginam", "pph"), ("a soft boggy uterus", "atonic uterus"), ("pulse {pr} bpm", "tachycardia pr {pr}"),
               ("BP {sbp}/50", "hypotension {sbp}/50"), ("placenta delivered and looks complete", "complete placenta"), ("she is pale and sweaty", "pallor")],
              ["What should I do?", "How do I manage this bleeding?", "What is the management?"],
              ["{age}yr P{gp} post delivery", "{age} year old para {gp} after delivery"],
              ["primary postpartum haemorrhage due to uterine atony", "pph secondary to atony"],
              ["retained products of conception", "genital tract trauma", "coagulopathy", "uterine rupture"],
              ["hb and grouping and crossmatch", "coagulation profile", "examine for tears", "check placenta"],
              ["call for help", "uterine massage", "oxytocin 10 IU IM then 20 IU in 500ml infusion", "misoprostol 800mcg sublingual",
               "2 large bore IV lines and fast ringers lactate", "tranexamic acid 1g IV", "catheterise and monitor urine output",
               "bimanual compression if bleeding continues", "transfuse and refer for surgical management if no response"]),
    Condition(OBS, MCH, {"age": age(18, 35), "weeks": age(6, 10)},
              ["A {age} year old woman with amenorrhoea of {weeks} weeks presents with", "A {age} yr old lady, LMP {weeks} weeks ago, comes in with"],
              [("lower abdominal pain more on the right", "right iliac fossa pain"), ("scanty vaginal bleeding", "pv spotting"), ("dizziness and fainting", "syncope"),
               ("positive pregnancy test", "positive pdt"), ("cervical excitation tenderness", "cervical excitation"), ("shoulder tip pain", "shoulder tip pain")],
              ["What is the likely diagnosis?", "How do I manage?", "What should be done?"],
              ["{age}yr with {weeks}/52 amenorrhoea", "{age} year old with amenorrhoea of {weeks} weeks"],
              ["ruptured ectopic pregnancy", "ectopic pregnancy"],
              ["threatened abortion", "ruptured ovarian cyst", "pelvic inflammatory disease", "appendicitis"],
              ["pelvic ultrasound", "hb", "grouping and crossmatch", "serum bhcg"],
              ["resuscitate with iv fluids", "insert 2 large bore cannulas", "crossmatch 2 units", "urgent laparotomy and salpingectomy",
               "inform the theatre and anaesthetist", "refer urgently if no theatre", "counsel on future pregnancies"]),
    Condition(OBS, MCH, {"age": age(19, 40), "g": age(1, 6), "ga": age(28, 36)},
              ["A {age} year old G{g}P{gp} at {ga} weeks reports", "A mother aged {age}, G{g}P{gp} at {ga} weeks, complains of"],
              [("draining clear liquor for 1 day", "draining liquor"), ("no contractions", "no contractions"), ("temperature 37.2", "afebrile"),
               ("fetal heart 140 regular", "fhr 140"), ("no foul smell", "no foul smell"), ("sterile speculum shows pooling", "pooling on speculum")],
              ["How should she be managed?", "What do I do?", "What is the plan?"],
              ["{age}yr G{g}P{gp} at {ga}/40", "{age} year old G{g}P{gp} {ga} weeks"],
              ["preterm prelabour rupture of membranes", "pprom"],
              ["urinary incontinence", "vaginal discharge", "chorioamnionitis"],
              ["fbc", "crp", "high vaginal swab", "obstetric ultrasound for liquor", "urinalysis"],
              ["admit", "erythromycin 250mg qid for 10 days", "dexamethasone 6mg 12 hourly 4 doses", "avoid digital vaginal exams",
               "monitor temperature, pulse and fetal heart", "deliver if signs of chorioamnionitis", "refer to facility with nbu"]),
    Condition(OBS, MCH, {"age": age(16, 30), "ga": age(36, 41)},
              ["A {age} year old primigravida at {ga} weeks was brought in", "A {age} yr old prime at term was brought"],
              [("after convulsing twice at home", "2 fits at home"), ("BP 170/115", "bp 170/115"), ("she is drowsy", "drowsy"), ("proteinuria 2+", "proteinuria 2+"),
               ("fetal heart 150", "fhr 150"), ("no history of epilepsy", "no epilepsy")],
              ["What is the emergency management?", "How do I manage her?"],
              ["{age}yr primi at {ga}/40", "{age} year old primigravida at {ga} weeks"],
              ["eclampsia", "antepartum eclampsia"],
              ["epilepsy", "cerebral malaria", "meningitis", "hypoglycaemia"],
              ["fbc and platelets", "uecs", "lfts", "rbs", "mps"],
              ["left lateral position and secure airway", "oxygen", "MgSO4 loading dose 4g IV over 5 minutes plus 10g IM",
               "hydralazine or labetalol for bp", "catheterise", "deliver within 12 hours of the fit", "monitor for magnesium toxicity", "refer to a level 4 or 5 hospital"]),
    Condition(PAED, CHILD, {"m": age(6, 48), "temp": age(38, 40), "rr": age(50, 70)},
              ["A {m} month old child is brought with", "A child aged {m} months was brought by the mother with"],
              [("cough for 3 days", "cough"), ("fast breathing RR {rr}", "rr {rr}"), ("lower chest wall indrawing", "chest indrawing"), ("fever of {temp}", "fever {temp}"),
               ("unable to breastfeed", "not feeding"), ("SPO2 88% in room air", "spo2 88%"), ("nasal flaring", "nasal flaring")],
              ["How do I manage?", "What is the diagnosis and treatment?", "What should I do for this child?"],
              ["{m} month old", "{m}/12 old child"],
              ["severe pneumonia", "pneumonia with hypoxaemia"],
              ["bronchiolitis", "asthma", "heart failure", "tuberculosis"],
              ["fbc", "chest xray", "pulse oximetry", "rbs", "mrdt for malaria"],
              ["admit", "oxygen via nasal prongs to keep spo2 above 92%", "benzylpenicillin 50000iu/kg qid plus gentamicin 7.5mg/kg od",
               "paracetamol for fever", "continue breastfeeding or ngt feeds", "monitor rr and spo2 four hourly", "switch to oral amoxicillin when improving",
               "counsel mother on danger signs"]),
    Condition(PAED, CHILD, {"m": age(6, 36), "days": age(2, 5)},
              ["A {m} month old child presents with", "Mother brings her {m} month old baby who has had"],
              [("watery diarrhoea for {days} days", "diarrhoea {days} days"), ("vomiting everything", "vomiting"), ("sunken eyes", "sunken eyes"),
               ("skin pinch goes back very slowly", "very slow skin pinch"), ("lethargic", "lethargy"), ("unable to drink", "unable to drink")],
              ["How do I rehydrate this child?", "What is the classification and management?", "What should I do?"],
              ["{m} month old", "{m}/12 child"],
              ["acute watery diarrhoea with severe dehydration", "gastroenteritis with severe dehydration"],
              ["cholera", "dysentery", "malaria", "severe acute malnutrition"],
              ["uecs", "rbs", "stool for microscopy", "mrdt"],
              ["plan c: ringers lactate 100ml/kg", "30ml/kg in the first hour (30 minutes if above 12 months), then 70ml/kg", "reassess every hour",
               "ors 5ml/kg/hr once able to drink", "zinc 20mg od for 14 days", "continue breastfeeding", "check weight for malnutrition",
               "refer if no iv access and give ors by ngt"]),
    Condition(PAED, CHILD, {"y": age(2, 9), "temp": age(38, 41)},
              ["A {y} year old child from a malaria endemic area has", "A {y} yr old is brought with"],
              [("fever of {temp} for 3 days", "fever {temp}"), ("convulsions twice today", "convulsions"), ("unable to sit", "prostration"), ("pallor", "pallor"),
               ("mRDT positive", "mrdt positive"), ("dark urine", "dark urine"), ("drowsy", "altered consciousness")],
              ["How do I manage this child?", "What is the diagnosis and management?"],
              ["{y}yr old", "{y} year old child"],
              ["severe malaria", "cerebral malaria"],
              ["meningitis", "septicaemia", "febrile convulsions", "hypoglycaemia"],
              ["blood slide for malaria parasites", "rbs", "hb", "lumbar puncture when stable", "uecs"],
              ["iv artesunate 3mg/kg at 0, 12 and 24 hours then daily", "check and correct blood sugar with 10% dextrose",
               "diazepam for convulsions", "paracetamol", "transfuse if hb below 5", "complete with oral al once able to take orally",
               "monitor consciousness and urine output", "refer if no improvement"]),
    Condition(PAED, CHILD, {"d": age(3, 25), "temp": pick("38.5", "38.9", "35.1", "35.4")},
              ["A {d} day old neonate is brought with", "A baby aged {d} days presented with"],
              [("poor sucking", "poor feeding"), ("temperature {temp}", "temperature {temp}"), ("reduced activity", "lethargy"), ("red umbilicus with pus", "omphalitis"),
               ("grunting", "grunting"), ("jaundice to the chest", "jaundice")],
              ["How do I manage?", "What is the diagnosis and plan?", "What should be done?"],
              ["{d} day old neonate", "{d}/7 old neonate"],
              ["neonatal sepsis", "late onset neonatal sepsis"],
              ["neonatal jaundice", "hypothermia", "meningitis", "hypoglycaemia"],
              ["fbc", "blood culture", "rbs", "crp", "lumbar puncture", "serum bilirubin"],
              ["admit to newborn unit", "iv benzylpenicillin and gentamicin for 7 to 10 days", "keep warm, kangaroo care",
               "feed ebm via ngt if not sucking", "cord care with chlorhexidine", "phototherapy if bilirubin high", "monitor temperature and sugars"]),
    Condition(PAED, CHILD, {"m": age(8, 36), "muac": pick("10.5", "11.0", "11.2")},
              ["A {m} month old child was brought with", "A {m} months old child presents with"],
              [("MUAC {muac} cm", "muac {muac}"), ("bilateral pitting oedema of the feet", "bilateral pedal oedema"), ("poor appetite", "poor appetite"),
               ("hair changes", "hair changes"), ("diarrhoea", "diarrhoea"), ("skin peeling", "flaky paint dermatosis")],
              ["How do I manage this child?", "What is the diagnosis?"],
              ["{m} month old", "{m}/12 old"],
              ["severe acute malnutrition (kwashiorkor)", "complicated severe acute malnutrition"],
              ["marasmus", "nephrotic syndrome", "hiv", "tuberculosis"],
              ["rbs", "hb", "hiv test", "urinalysis", "uecs"],
              ["admit to stabilisation", "f75 feeds every 3 hours then f100", "treat hypoglycaemia and hypothermia", "broad spectrum antibiotics",
               "resomal for dehydration, not standard ors", "vitamin a and folic acid", "no iron in the first week", "nutrition counselling for the mother"]),
    Condition(MED, ADULT, {"age": age(45, 75), "sbp": age(150, 190)},
              ["A {age} year old hypertensive man complains of", "A {age} yr old known hypertensive presents with"],
              [("breathlessness on lying flat", "orthopnoea"), ("waking up at night breathless", "pnd"), ("swelling of both legs", "bilateral pedal oedema"),
               ("raised JVP", "raised jvp"), ("bibasal crepitations", "basal crepitations"), ("BP {sbp}/100", "bp {sbp}/100")],
              ["What is the management?", "How should I manage him?"],
              ["{age}yr hypertensive", "{age} year old known hypertensive"],
              ["congestive heart failure secondary to hypertensive heart disease", "hypertensive heart disease in heart failure"],
              ["renal failure", "dilated cardiomyopathy", "nephrotic syndrome", "chronic liver disease"],
              ["ecg", "echo", "uecs", "chest xray", "fbc", "lipid profile"],
              ["prop up in bed", "oxygen if spo2 below 94%", "iv furosemide 40mg", "start enalapril", "add spironolactone", "beta blocker when stable",
               "salt and fluid restriction", "daily weights", "counsel on adherence and refer to medical clinic"]),
    Condition(MED, ADULT, {"age": age(18, 45), "rbs": age(22, 33)},
              ["A {age} year old known diabetic on insulin presents with", "A {age} yr old diabetic came in with"],
              [("vomiting and abdominal pain", "vomiting and abdominal pain"), ("deep fast breathing", "kussmaul breathing"), ("RBS {rbs} mmol/l", "rbs {rbs}"),
               ("ketones 3+ in urine", "ketonuria 3+"), ("he stopped insulin 3 days ago", "missed insulin"), ("dry mucosa", "dehydration")],
              ["How do I manage?", "What is the diagnosis and management?"],
              ["{age}yr diabetic", "{age} year old known diabetic"],
              ["diabetic ketoacidosis", "dka"],
              ["hyperosmolar hyperglycaemic state", "sepsis", "acute abdomen", "gastroenteritis"],
              ["rbs hourly", "urinalysis for ketones", "uecs and potassium", "blood gas", "fbc", "look for infection"],
              ["normal saline 1 litre in the first hour then per deficit", "soluble insulin infusion 0.1 units/kg/hr after fluids",
               "potassium replacement once passing urine", "switch to dextrose saline when rbs below 14", "treat precipitating infection",
               "monitor input and output", "diabetic education before discharge"]),
    Condition(MED, ADULT, {"age": age(25, 50), "cd4": age(20, 90)},
              ["A {age} year old HIV positive patient on ART for 2 months presents with", "A {age} yr old PLHIV recently started on ART has"],
              [("headache for 2 weeks", "headache"), ("fever", "fever"), ("neck stiffness", "neck stiffness"), ("CD4 {cd4}", "cd4 {cd4}"),
               ("confusion", "confusion"), ("vomiting", "vomiting")],
              ["What should I suspect?", "How do I manage?"],
              ["{age}yr plhiv on art", "{age} year old hiv positive"],
              ["cryptococcal meningitis", "cryptococcal meningitis possibly iris"],
              ["tb meningitis", "bacterial meningitis", "toxoplasmosis", "cerebral malaria"],
              ["serum crag", "lumbar puncture with opening pressure", "csf crag and indian ink", "uecs", "fbc"],
              ["amphotericin b plus flucytosine induction", "fluconazole consolidation", "therapeutic lumbar punctures for raised pressure",
               "defer art change, review timing", "monitor potassium and creatinine", "refer to a county hospital if no lp"]),
    Condition(MED, ADULT, {"age": age(20, 60), "weeks": age(3, 8)},
              ["A {age} year old presents with", "A {age} yr old patient complains of"],
              [("cough for {weeks} weeks", "cough {weeks} weeks"), ("night sweats", "night sweats"), ("weight loss", "weight loss"), ("haemoptysis", "haemoptysis"),
               ("fever in the evenings", "evening fevers"), ("contact with a TB patient at home", "tb contact")],
              ["What is the likely diagnosis?", "How do I manage?"],
              ["{age}yr", "{age} year old"],
              ["pulmonary tuberculosis", "ptb"],
              ["pneumonia", "lung cancer", "hiv related pneumocystis", "bronchiectasis"],
              ["genexpert on sputum", "chest xray", "hiv test", "fbc", "rbs"],
              ["start 2rhze/4rh as per national guidelines", "notify and register", "contact tracing", "nutrition support",
               "dot with treatment supporter", "screen household contacts and give tpt", "review at 2 months"]),
    Condition(MED, ADULT, {"age": age(40, 70), "side": pick("left", "right"), "hours": age(1, 4)},
              ["A {age} year old hypertensive woman was brought with", "A {age} yr old came in with"],
              [("sudden {side} sided weakness for {hours} hours", "{side} hemiparesis {hours}hrs"), ("slurred speech", "dysarthria"), ("facial asymmetry", "facial deviation"),
               ("BP 190/110", "bp 190/110"), ("RBS 7.2", "rbs normal"), ("no history of trauma", "no trauma")],
              ["How do I manage?", "What is the plan?"],
              ["{age}yr hypertensive", "{age} year old"],
              ["acute stroke", "cerebrovascular accident"],
              ["hypoglycaemia", "intracranial haemorrhage", "space occupying lesion", "todds palsy"],
              ["ct scan of the head", "rbs", "uecs", "lipid profile", "ecg"],
              ["abc and position", "nil by mouth until swallow assessed", "do not lower bp aggressively", "aspirin after ct excludes bleed",
               "refer for thrombolysis if within window", "physiotherapy", "manage risk factors"]),
    Condition(SURG, ADULT, {"age": age(15, 35), "temp": pick("37.8", "38.2", "38.5")},
              ["A {age} year old male has had", "A {age} yr old presents with"],
              [("periumbilical pain moving to the right iliac fossa", "migratory rif pain"), ("vomiting", "vomiting"), ("anorexia", "anorexia"),
               ("fever {temp}", "fever {temp}"), ("rebound tenderness", "rebound tenderness"), ("pain on walking", "pain on walking")],
              ["What is the diagnosis and management?", "What should I do?"],
              ["{age}yr male", "{age} year old"],
              ["acute appendicitis", "acute appendicitis, alvarado high"],
              ["mesenteric adenitis", "ureteric colic", "gastroenteritis", "perforated ulcer"],
              ["fbc", "urinalysis", "abdominal ultrasound", "uecs"],
              ["nil per oral", "iv fluids", "analgesia", "iv ceftriaxone and metronidazole", "appendicectomy", "refer to surgeon"]),
    Condition(SURG, ADULT, {"age": age(40, 80), "days": age(2, 5)},
              ["A {age} year old man presents with", "A {age} yr old man came with"],
              [("abdominal distension for {days} days", "distension {days} days"), ("no passage of stool or flatus", "absolute constipation"),
               ("colicky pain", "colicky pain"), ("vomiting", "vomiting"), ("tinkling bowel sounds", "high pitched bowel sounds"), ("old laparotomy scar", "previous surgery")],
              ["How do I manage?", "What is the diagnosis?"],
              ["{age}yr male", "{age} year old man"],
              ["intestinal obstruction", "adhesive small bowel obstruction"],
              ["sigmoid volvulus", "obstructed hernia", "colorectal cancer", "paralytic ileus"],
              ["erect and supine abdominal xray", "uecs", "fbc", "grouping and crossmatch"],
              ["nil by mouth", "ng tube on free drainage", "iv fluids and correct electrolytes", "catheterise and chart output",
               "analgesia", "urgent surgical review", "laparotomy if no resolution"]),
    Condition("SURGERY ENT", ADULT, {"y": age(3, 30)},
              ["A {y} year old presents with", "A {y} yr old is brought with"],
              [("bleeding from the nose for 1 hour", "epistaxis"), ("it started after picking the nose", "nose picking"), ("pulse 100", "pr 100"),
               ("BP normal", "normotensive"), ("no bleeding disorder", "no bleeding disorder"), ("blood in the throat", "posterior flow")],
              ["How do I stop the bleeding?", "What is the management?"],
              ["{y}yr", "{y} year old"],
              ["anterior epistaxis", "epistaxis from littles area"],
              ["posterior epistaxis", "bleeding disorder", "hypertension", "nasal tumour"],
              ["fbc", "bleeding and clotting times", "bp"],
              ["sit up leaning forward", "pinch the soft part of the nose for 10 to 15 minutes", "ice packs", "nasal pack if bleeding continues",
               "cauterise bleeding point", "iv line if unstable", "refer to ent if persistent"]),
    Condition("CRITICAL CARE SURGERY", CRIT, {"age": age(18, 45), "pr": age(120, 145), "sbp": age(70, 88)},
              ["A {age} year old motorcycle crash victim has", "A {age} yr old boda boda rider involved in an accident has"],
              [("abdominal pain", "abdominal pain"), ("left upper quadrant tenderness", "luq tenderness"), ("left shoulder tip pain", "kehr sign"),
               ("PR {pr}", "pr {pr}"), ("BP {sbp}/50", "bp {sbp}/50"), ("FAST positive", "fast positive")],
              ["What is the plan?", "How do I manage?"],
              ["{age}yr rta victim", "{age} year old blunt abdominal trauma"],
              ["splenic injury with haemoperitoneum and haemorrhagic shock", "splenic rupture with hypovolemic shock"],
              ["liver laceration", "pelvic fracture", "hollow viscus injury", "renal injury"],
              ["fast scan", "hb", "grouping and crossmatch", "ct abdomen if stable"],
              ["primary survey abcde", "2 large bore lines", "permissive hypotension", "tranexamic acid 1g iv", "transfuse",
               "urgent laparotomy", "catheterise", "tetanus toxoid"]),
    Condition(CC, CRIT, {"age": age(30, 70), "lact": pick("4", "5", "6")},
              ["In ICU a {age} year old post laparotomy patient on ventilator develops", "A {age} yr old in icu after surgery now has"],
              [("fever 39", "fever"), ("BP 80/40 on noradrenaline", "hypotension on pressors"), ("lactate {lact}", "lactate {lact}"), ("urine output 10ml/hr", "oliguria"),
               ("purulent tracheal secretions", "purulent secretions"), ("wound discharge", "wound discharge")],
              ["How should I manage septic shock?", "What is the management?"],
              ["{age}yr post laparotomy ventilated", "{age} year old post laparotomy"],
              ["septic shock", "septic shock from intra abdominal source"],
              ["ventilator associated pneumonia", "anastomotic leak", "haemorrhage", "adrenal insufficiency"],
              ["blood cultures", "lactate", "fbc", "uecs", "ct abdomen", "tracheal aspirate culture"],
              ["broad spectrum antibiotics within 1 hour (meropenem)", "fluid bolus 30ml/kg", "titrate noradrenaline to map above 65",
               "hydrocortisone if refractory", "source control", "repeat lactate", "strict input and output", "dvt and stress ulcer prophylaxis"]),
    Condition(CC, CRIT, {"age": age(16, 45), "gcs": age(6, 10)},
              ["A {age} year old was brought after", "A {age} yr old is brought in following"],
              [("ingesting an unknown pesticide", "organophosphate ingestion"), ("excessive salivation", "hypersalivation"), ("pinpoint pupils", "miosis"),
               ("GCS {gcs}", "gcs {gcs}"), ("bradycardia 48", "bradycardia"), ("crepitations in the chest", "bronchorrhoea")],
              ["What do I do?", "How do I manage this poisoning?"],
              ["{age}yr", "{age} year old"],
              ["organophosphate poisoning", "organophosphate poisoning with cholinergic crisis"],
              ["carbamate poisoning", "opioid overdose", "head injury", "alcohol intoxication"],
              ["rbs", "uecs", "cholinesterase level if available", "chest xray", "blood gas"],
              ["secure airway and suction", "oxygen", "decontaminate and remove clothes", "atropine 2mg iv, double every 5 minutes until chest clear",
               "pralidoxime if available", "do not induce vomiting", "admit to icu", "psychiatric review when stable"]),
    Condition(CC, CRIT, {"y": age(3, 12), "spo2": age(82, 90)},
              ["A {y} year old known asthmatic is brought with", "A {y} yr old asthmatic presents with"],
              [("difficulty in breathing", "dyspnoea"), ("unable to complete sentences", "unable to talk in sentences"), ("SPO2 {spo2}%", "spo2 {spo2}%"),
               ("widespread wheeze", "wheeze"), ("using accessory muscles", "accessory muscle use"), ("silent chest on the right", "silent chest")],
              ["How do I manage?", "What is the emergency care?"],
              ["{y}yr asthmatic", "{y} year old known asthmatic"],
              ["acute severe asthma", "life threatening asthma"],
              ["pneumonia", "foreign body aspiration", "pneumothorax", "anaphylaxis"],
              ["pulse oximetry", "peak flow if able", "chest xray", "blood gas"],
              ["oxygen to keep spo2 above 94%", "salbutamol nebulisation every 20 minutes", "ipratropium", "hydrocortisone iv or oral prednisolone",
               "iv magnesium sulphate if no response", "admit to hdu", "review inhaler technique and controller on discharge"]),
    Condition(OBS, MCH, {"age": age(22, 40), "g": age(2, 6), "ga": age(29, 38)},
              ["A {age} year old G{g}P{gp} at {ga} weeks presents with", "A mother aged {age}, G{g}P{gp} at {ga} weeks, came with"],
              [("painless bright red vaginal bleeding", "painless aph"), ("soaking 3 pads", "soaked 3 pads"), ("soft non tender uterus", "soft uterus"),
               ("fetal heart 146", "fhr 146"), ("previous caesarean section", "previous cs"), ("pallor", "pallor")],
              ["What is the likely cause and what should I do?", "How do I manage her?"],
              ["{age}yr G{g}P{gp} at {ga}/40", "{age} year old G{g}P{gp} {ga} weeks"],
              ["antepartum haemorrhage likely placenta praevia", "aph secondary to placenta praevia"],
              ["placental abruption", "vasa praevia", "cervical lesion", "show of labour"],
              ["obstetric ultrasound for placental site", "hb", "grouping and crossmatch", "coagulation profile"],
              ["no digital vaginal examination", "2 large bore cannulas and iv fluids", "crossmatch 2 units", "dexamethasone if below 34 weeks",
               "admit for expectant management if stable", "caesarean section if heavy bleeding", "refer to a facility with theatre and blood"]),
    Condition(PAED, CHILD, {"m": age(3, 48), "temp": age(38, 40)},
              ["A {m} month old child presents with", "A child of {m} months was brought with"],
              [("fever of {temp}", "fever {temp}"), ("neck stiffness", "neck stiffness"), ("bulging fontanelle", "bulging fontanelle"), ("irritability", "irritability"),
               ("convulsions", "convulsions"), ("vomiting", "vomiting")],
              ["What is the diagnosis?", "How do I manage this child?"],
              ["{m} month old", "{m}/12 child"],
              ["bacterial meningitis", "acute bacterial meningitis"],
              ["cerebral malaria", "febrile convulsions", "encephalitis", "sepsis"],
              ["lumbar puncture csf analysis", "blood culture", "fbc", "rbs", "mrdt"],
              ["iv ceftriaxone 100mg/kg od for 10 days", "dexamethasone before first antibiotic dose", "phenobarbitone or diazepam for fits",
               "maintenance fluids", "monitor head circumference and consciousness", "hearing test before discharge"]),
    Condition(SURG, CHILD, {"y": age(1, 8), "pct": age(12, 30)},
              ["A {y} year old child pulled a pot of hot water and has", "A {y} yr old sustained scalds and has"],
              [("burns on the chest and both arms", "burns chest and arms"), ("about {pct}% body surface", "tbsa {pct}%"), ("blisters", "blisters"),
               ("crying in pain", "pain"), ("no facial burns", "face spared"), ("burns one hour ago", "1 hour old burn")],
              ["How do I manage?", "What fluids should I give?"],
              ["{y}yr with scald burns", "{y} year old child"],
              ["{pct}% superficial partial thickness scald burns", "partial thickness burns {pct}% tbsa"],
              ["deep dermal burns", "non accidental injury", "inhalation injury"],
              ["hb", "uecs", "weight", "urinalysis"],
              ["cool with running water", "analgesia with morphine or paracetamol", "parkland formula 4ml/kg/%tbsa in 24 hours, half in 8 hours",
               "add maintenance fluids", "catheterise and monitor urine output", "dress with silver sulfadiazine", "tetanus toxoid", "nutrition support"]),
    Condition(CC, CRIT, {"age": age(16, 50), "gcs": age(7, 12)},
              ["A {age} year old was brought after a fall from a motorcycle with", "A {age} yr old road traffic victim has"],
              [("head injury", "head injury"), ("GCS {gcs}/15", "gcs {gcs}"), ("vomiting twice", "vomiting"), ("unequal pupils", "anisocoria"),
               ("bleeding from the ear", "otorrhagia"), ("smell of alcohol", "alcohol")],
              ["What do I do?", "How should I manage?"],
              ["{age}yr rta", "{age} year old head injury"],
              ["severe traumatic brain injury", "moderate to severe head injury with raised icp"],
              ["extradural haematoma", "base of skull fracture", "alcohol intoxication", "cervical spine injury"],
              ["ct scan of the head", "rbs", "hb", "cervical spine xray"],
              ["abcde with c spine protection", "intubate if gcs 8 or below", "head up 30 degrees", "avoid hypotension and hypoxia",
               "mannitol if signs of herniation", "neuro observations hourly", "urgent referral for neurosurgery"]),
    Condition(MED, ADULT, {"age": age(15, 60), "hours": age(1, 6)},
              ["A {age} year old farmer was bitten by a snake {hours} hours ago and has", "A {age} yr old was bitten on the leg and has"],
              [("swelling of the leg", "limb swelling"), ("bleeding from the gums", "gum bleeding"), ("fang marks", "fang marks"), ("pain", "pain"),
               ("blood not clotting in a tube", "20 minute wbct positive"), ("drooping eyelids", "ptosis")],
              ["How do I manage this?", "What should I do?"],
              ["{age}yr snakebite", "{age} year old with snake bite"],
              ["snake envenomation with coagulopathy", "venomous snakebite"],
              ["dry bite", "cellulitis", "compartment syndrome"],
              ["20 minute whole blood clotting test", "fbc", "uecs", "urinalysis"],
              ["reassure and immobilise the limb", "no tourniquet or incision", "polyvalent antivenom", "prepare adrenaline for anaphylaxis",
               "analgesia", "tetanus toxoid", "repeat clotting test 6 hourly", "refer if antivenom not available"]),
    Condition(MED, ADULT, {"age": age(20, 40), "hb": pick("6.2", "7.1", "5.8"), "ga": age(24, 34)},
              ["A {age} year old pregnant woman at {ga} weeks has", "A {age} yr old at {ga} weeks gestation complains of"],
              [("easy fatigability", "fatigue"), ("palpitations", "palpitations"), ("HB {hb} g/dl", "hb {hb}"), ("pallor", "pallor"),
               ("not taking IFAS", "not on ifas"), ("dizziness", "dizziness")],
              ["How do I manage?", "What is the plan?"],
              ["{age}yr at {ga}/40", "{age} year old pregnant"],
              ["severe anaemia in pregnancy", "iron deficiency anaemia in pregnancy"],
              ["malaria", "hookworm infestation", "sickle cell disease", "hiv"],
              ["fbc with indices", "peripheral blood film", "stool for ova", "mrdt", "hiv test"],
              ["transfuse if hb below 7 near term or symptomatic", "iron and folic acid", "deworm with albendazole", "ipt for malaria",
               "nutrition advice", "repeat hb in 4 weeks", "plan delivery in a facility with blood"]),
]

STYLES = ("labelled", "prose", "notes")
# (as the nurse adds it, as a clinician may carry it into the summary)
BACKGROUND = [
    ("No known drug allergies.", "nkda"), ("The patient was referred from a nearby dispensary.", "referred from a dispensary"),
    ("The patient has not been on any treatment.", "no treatment so far"), ("The facility has no doctor at night.", ""),
    ("We have limited laboratory services.", "limited lab"), ("The family is worried about the cost of referral.", ""),
    ("The patient came in the evening after walking a long distance.", "came from far"),
    ("Our ambulance is not available today.", "no ambulance available"),
    ("Symptoms started about three days ago and have been getting worse.", "worsening over 3 days"),
    ("Herbal medicine was given at home before coming.", "took herbs"),
    ("There is no similar illness in the family.", ""),
    ("The patient was well until yesterday evening.", "acute onset"),
    ("Previous visits to the facility were for minor illnesses only.", ""),
]


def _gp(slots: dict) -> dict:
    g = slots.get("g")
    return {**slots, "gp": max(0, (g or 1) - 1)}


def _typo(text: str, rng: random.Random) -> str:
    """The odd typo real vignettes carry: one swapped pair of letters in one longer word."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) > 6 and w.isalpha()]
    if not long:
        return text
    i = rng.choice(long)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def vignette(c: Condition, rng: random.Random, years: str, level: str, county: str) -> tuple[str, dict]:
    slots = _gp({name: make(rng) for name, make in c.slots.items()})
    chosen = rng.sample(c.findings, rng.randint(4, len(c.findings)))
    said = [nurse.format(**slots) for nurse, _ in chosen]
    intro = (f"I am a nurse with {years} years of experience in General nursing working in a {level} in {county} county in Kenya."
             if years else f"I am a nurse working in a {level} in {county} county in Kenya.")
    case = rng.choice(c.cases).format(**slots) + " " + ", ".join(said[:-1]) + " and " + said[-1] + "."
    extras = rng.sample(c.extras, rng.randint(0, len(c.extras))) if c.extras else []
    vitals = {"T": f"{rng.uniform(35.8, 39.6):.1f}", "PR": str(rng.randint(70, 135)), "RR": str(rng.randint(16, 40)),
              "SPO2": f"{rng.randint(86, 99)}%"}
    shown = rng.sample(list(vitals), rng.randint(2, 4))
    vitals_said = "On examination " + ", ".join(f"{k} {vitals[k]}" for k in shown) + "."
    background = rng.sample(BACKGROUND, rng.randint(2, 4))
    asked = rng.sample(c.questions, rng.randint(1, min(2, len(c.questions))))
    text = " ".join([case, *extras, vitals_said, *(nurse for nurse, _ in background), *asked])
    if rng.random() < 0.3:
        text = _typo(text, rng)
    sep = "\n" if rng.random() < 0.25 else " "
    facts = {"slots": slots, "chosen": chosen, "vitals": [f"{k.lower()} {vitals[k]}" for k in shown],
             "background": [clin for _, clin in background]}
    return intro + sep + text, facts


# What clinicians add whatever the case, each in their own way: the part of a real answer that the
# vignette does not predict, and the reason a model cannot learn the answers by heart.
GENERIC = ["secure iv access", "take vitals every 4 hours", "inform the clinician on call", "involve the family in the plan",
           "arrange referral with a nurse escort", "pain relief with paracetamol", "check hb", "keep nil by mouth until reviewed",
           "offer hiv testing", "check immunisation status", "observe for 24 hours", "strict fluid balance chart",
           "psychosocial support", "explain the findings to the patient", "review the referral letter", "ensure the patient is warm",
           "continue routine care", "check blood sugar", "educate on hygiene", "follow national guidelines", "screen for tb",
           "assess for danger signs", "record in the register", "confirm the diagnosis before treating", "nutrition assessment"]
# Clinicians' own words for the same step.
SYNONYMS = [("iv ", "intravenous "), ("monitor", "observe"), ("admit", "admission"), ("refer", "transfer"), ("give", "administer"),
            ("start", "commence"), ("urgent", "immediate"), (" and ", " & ")]


def paraphrase(text: str, rng: random.Random) -> str:
    for word, other in SYNONYMS:
        if word in text and rng.random() < 0.35:
            text = text.replace(word, other)
    return text


CLOSING = ["counsel the patient and family on the condition", "health education on danger signs", "review in clinic after discharge",
           "document and follow up", "refer early if the facility lacks capacity"]


def clinician_answer(c: Condition, rng: random.Random, facts: dict) -> str:
    slots, chosen = facts["slots"], facts["chosen"]
    who = rng.choice(c.opening).format(**slots)
    # Clinicians restate the case partly in the nurse's own words, partly in shorthand.
    restated = [(nurse if rng.random() < 0.7 else clin).format(**slots) for nurse, clin in chosen]
    restated = restated[: max(3, len(restated) - rng.randint(0, 1))]
    if rng.random() < 0.7:
        restated.append(" ".join(facts["vitals"]))
    restated += [clin for clin in facts["background"] if clin and rng.random() < 0.7]
    dx = rng.choice(c.dx).format(**slots)
    ddx = rng.sample(c.ddx, rng.randint(1, 3))
    same_panel = [other for other in CONDITIONS if other.panel == c.panel and other is not c]
    if same_panel and rng.random() < 0.4:  # a differential of the clinician's own, from the same specialty
        ddx.append(rng.choice(rng.choice(same_panel).dx).format(**{**slots, "pct": slots.get("pct", 20)}))
    ix = rng.sample(c.ix, rng.randint(2, len(c.ix)))
    mx = rng.sample(c.mx, rng.randint(3, len(c.mx))) + rng.sample(GENERIC, rng.randint(2, 4))
    rng.shuffle(mx)
    mx = [paraphrase(step, rng) for step in mx] + rng.sample(CLOSING, rng.randint(1, 3))
    style = rng.choice(STYLES)
    if style == "labelled":
        return (f"Summary: {who} with {', '.join(restated)}.\nDiagnosis: {dx}.\nDifferentials: {', '.join(ddx)}.\n"
                f"Investigations: {', '.join(ix)}.\nManagement: {', '.join(mx)}.")
    if style == "prose":
        return (f"summary\na {who} presenting with {', '.join(restated[:-1])} and {restated[-1]}. this is most likely {dx}, "
                f"rule out {' or '.join(ddx)}. investigate with {', '.join(ix)}. management: {'; '.join(mx)}.")
    return (f"Summary - {who}, {'; '.join(restated)}\nImp: {dx}\nDdx: {', '.join(ddx)}\nIx: {', '.join(ix)}\n"
            "Plan:\n" + "\n".join(f"- {step}" for step in mx))


def llm_answer(c: Condition, rng: random.Random, facts: dict, voice: str) -> str:
    """A commercial LLM's answer as the real columns have them: long, generic, formatted."""
    dx, ddx, ix, mx = c.dx[0], c.ddx, c.ix, c.mx
    opener = {
        "GPT4.0": "Thank you for sharing this case. Based on the information provided, here is a structured approach.",
        "LLAMA": "This is a challenging clinical scenario. Let me walk you through the assessment and management step by step.",
        "GEMINI": "Okay, let's break down this case and create a management plan appropriate for your setting.",
    }[voice]
    bullets = "\n".join(f"* **{step.capitalize()}**: ensure this is done according to national guidelines and facility protocols." for step in mx)
    return (f"{opener}\n\n### 1. Initial Assessment\n* Assess airway, breathing and circulation (ABC).\n* Take a full history and "
            f"perform a thorough physical examination.\n\n### 2. Likely Diagnosis\nThe most likely diagnosis is **{dx}**. Other "
            f"possibilities include {', '.join(ddx)}.\n\n### 3. Investigations\n" + "\n".join(f"* {t.capitalize()}" for t in ix)
            + f"\n\n### 4. Management\n{bullets}\n\n### 5. Referral and Follow-up\n* Refer to a higher-level facility if the "
            "patient does not improve or if resources are limited.\n* Educate the patient and family about warning signs.\n\n"
            "**Disclaimer:** This information is for educational purposes and does not replace professional medical judgement.")


def panel_spelling(panel: str, rng: random.Random) -> str:
    """Real files vary the panel's case now and then."""
    return string.capwords(panel.lower()) if rng.random() < 0.12 else panel


def make_rows(n: int, rng: random.Random, *, labelled: bool, taken: set[str]) -> list[dict]:
    rows = []
    for i in range(n):
        c = CONDITIONS[i % len(CONDITIONS)] if i < len(CONDITIONS) else rng.choice(CONDITIONS)
        level, county = rng.choice(LEVELS), rng.choice(COUNTIES)
        years = "" if rng.random() < (0.08 if labelled else 0.25) else str(rng.randint(1, 30))
        prompt, facts = vignette(c, rng, years, level, county)
        while True:
            key = "ID_" + "".join(rng.choice(string.ascii_letters) for _ in range(8))
            if key not in taken:
                taken.add(key)
                break
        row = {"Master_Index": key, "County": county, "Health level": level, "Years of Experience": years, "Prompt": prompt,
               "Nursing Competency": c.competency, "Clinical Panel": panel_spelling(c.panel, rng)}
        if labelled:
            row["Clinician"] = clinician_answer(c, rng, facts)
            for voice in ("GPT4.0", "LLAMA", "GEMINI"):
                row[voice] = llm_answer(c, rng, facts, voice) if rng.random() < 0.9 else ""
            row["DDX SNOMED"] = "\n".join([c.dx[0], *c.ddx[:2]])
        rows.append(row)
    return rows


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(out_dir: Path = HERE) -> None:
    rng = random.Random(SEED)
    taken: set[str] = set()
    write(out_dir / "train.csv", make_rows(N_TRAIN, rng, labelled=True, taken=taken))
    write(out_dir / "test.csv", make_rows(N_TEST, rng, labelled=False, taken=taken))


if __name__ == "__main__":
    main()
