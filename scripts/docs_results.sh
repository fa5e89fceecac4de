#!/usr/bin/env bash
# Every number and figure the docs quote from the shipped checkpoints, regenerated after retraining
# (`make results`; about an hour on 2 cores). Study outputs go to out/results/NAME; the figures the
# docs show are copied into docs/figures/. `diffinterp depth` tables do not depend on the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=out/results
study() {  # study NAME OUTNAME FIGDIR [ARGS...]: run one case study and copy its PNG figures
    local name=$1 out=$OUT/$2 figs=$3
    shift 3
    "$PY" -m diffinterp.cli case-study "$name" --out "$out" "$@"
    mkdir -p "$figs"
    cp "$out"/*.png "$figs"/
}
"$PY" benchmarks/organism_gates.py                       # docs/results/organism_gates.{json,md}, the curve figure
"$PY" -m diffinterp.cli depth --config real --chain-lengths 48 27 --json "$OUT/depth_real.json"
study non-chronological non_chronological_carry docs/figures/case-studies/non-chronological/carry --model carry --n 100
study non-chronological non_chronological_latin docs/figures/case-studies/non-chronological/latin --model latin --n 100
study intermediate-context intermediate_context docs/figures/case-studies/intermediate-context/gold --n 100
study variable-transparency variable_transparency docs/figures/variable_transparency --model latin --n 100
study token-identity token_identity docs/figures/case-studies/token-identity --model latin --n 100
study monitorability monitorability docs/figures/case-studies/monitorability --n 200
study self-correction self_correction docs/figures/case-studies/self-correction --n 100
study smearing smearing docs/figures/case-studies/smearing --n 100
study response-length response_length docs/figures/case-studies/response-length --n 100
OMP_NUM_THREADS=1 study sae-features sae_features docs/figures/saes --n 200   # docs/saes.md
OMP_NUM_THREADS=1 study sae-splice sae_splice docs/figures/saes/splice --n 200  # docs/saes.md, every shipped model
cp "$OUT"/sae_splice/tables.md docs/results/sae_splice.md
"$PY" benchmarks/record_io.py --json docs/results/record_io.json
"$PY" benchmarks/instrument_examples.py
"$PY" benchmarks/viewer_examples.py
