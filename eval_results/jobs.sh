#!/usr/bin/env bash
# The long evaluation runs behind the README's "Results on the embedded model" tables, as two
# queues meant to run side by side on the 2-core VM (each --threads 1). Every step resumes from
# the responses.jsonl it writes, so re-running a queue after an interruption continues it.
#   nohup eval_results/jobs.sh dev  > eval_results/logs/dev.log  2>&1 &
#   nohup eval_results/jobs.sh test > eval_results/logs/test.log 2>&1 &
#   nohup eval_results/jobs.sh gated-test > eval_results/logs/gated-test.log 2>&1 &   (a third queue)
#   nohup eval_results/jobs.sh strategies > eval_results/logs/strategies.log 2>&1 &
#   nohup eval_results/jobs.sh retention > eval_results/logs/retention.log 2>&1 &
#   nohup eval_results/jobs.sh gated-dev > eval_results/logs/gated-dev.log 2>&1 &
#   nohup eval_results/jobs.sh gated-test-more > eval_results/logs/gated-test-more.log 2>&1 &
#   nohup eval_results/jobs.sh strategies-test > eval_results/logs/strategies-test.log 2>&1 &
#   nohup eval_results/jobs.sh retention-sweep-a > eval_results/logs/retention-sweep-a.log 2>&1 &   (a-d)
#   nohup eval_results/jobs.sh retention-test-a > eval_results/logs/retention-test-a.log 2>&1 &     (a, b)
#   nohup eval_results/jobs.sh gemma-ifeval > eval_results/logs/gemma-ifeval.log 2>&1 &
#   nohup eval_results/jobs.sh gemma-retention > eval_results/logs/gemma-retention.log 2>&1 &
#   nohup eval_results/jobs.sh retention-long > eval_results/logs/retention-long.log 2>&1 &
#   nohup eval_results/jobs.sh retention-more > eval_results/logs/retention-more.log 2>&1 &
#   nohup eval_results/jobs.sh retention-after > eval_results/logs/retention-after.log 2>&1 &
#   nohup eval_results/jobs.sh retention-4k > eval_results/logs/retention-4k.log 2>&1 &
#   nohup eval_results/jobs.sh gemma-long > eval_results/logs/gemma-long.log 2>&1 &
#   nohup eval_results/jobs.sh retention-length-4k-i > eval_results/logs/retention-length-4k-i.log 2>&1 &   (i, j)
#   nohup eval_results/jobs.sh priority-qwen-dev > eval_results/logs/priority-qwen-dev.log 2>&1 &   (then -test)
#   nohup eval_results/jobs.sh priority-small > eval_results/logs/priority-small.log 2>&1 &
#   nohup eval_results/jobs.sh qwen-ifeval-dev > eval_results/logs/qwen-ifeval-dev.log 2>&1 &
#   nohup eval_results/jobs.sh priority-qwen-2k > eval_results/logs/priority-qwen-2k.log 2>&1 &   (then qwen-retention)
#   nohup eval_results/jobs.sh new-methods-priority > eval_results/logs/new-methods-priority.log 2>&1 &   (then priority-qwen-2k-rest)
#   nohup eval_results/jobs.sh new-methods-ifeval > eval_results/logs/new-methods-ifeval.log 2>&1 &
#   nohup eval_results/jobs.sh priority-small-new > eval_results/logs/priority-small-new.log 2>&1 &
#   nohup eval_results/jobs.sh priority-qwen-dev-more > eval_results/logs/priority-qwen-dev-more.log 2>&1 &
#   nohup eval_results/jobs.sh ifeval-qwen-new > eval_results/logs/ifeval-qwen-new.log 2>&1 &
#   nohup eval_results/jobs.sh spa-rest > eval_results/logs/spa-rest.log 2>&1 &
#   nohup eval_results/jobs.sh ifeval-qwen-bf16 > eval_results/logs/ifeval-qwen-bf16.log 2>&1 &
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-b > eval_results/logs/ifeval-qwen-bf16-b.log 2>&1 &   (beside it)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-c > eval_results/logs/ifeval-qwen-bf16-c.log 2>&1 &   (PASTA, SpotLight)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-d > eval_results/logs/ifeval-qwen-bf16-d.log 2>&1 &   (DIRECTER; waits)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-f > eval_results/logs/ifeval-qwen-bf16-f.log 2>&1 &   (gated dev points, InstABoost 10 test; waits)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-g > eval_results/logs/ifeval-qwen-bf16-g.log 2>&1 &   (SpotLight 0.3 test)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-e > eval_results/logs/ifeval-qwen-bf16-e.log 2>&1 &   (PASTA upper/heads; waits)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-e2 > eval_results/logs/ifeval-qwen-bf16-e2.log 2>&1 &   (-e, then retention grids)
#   nohup eval_results/jobs.sh qwen-retention-s21-a > eval_results/logs/qwen-retention-s21-a.log 2>&1 &   (a, b)
#   nohup eval_results/jobs.sh qwen-retention-s21-c > eval_results/logs/qwen-retention-s21-c.log 2>&1 &   (c, d: test cells; they wait)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-h > eval_results/logs/ifeval-qwen-bf16-h.log 2>&1 &   (gated dev, then retention)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-test > eval_results/logs/ifeval-qwen-bf16-test.log 2>&1 &   (after both)
#   nohup eval_results/jobs.sh ifeval-qwen-bf16-spa-test > eval_results/logs/ifeval-qwen-bf16-spa-test.log 2>&1 &
#   nohup eval_results/jobs.sh ifeval-smollm2-new > eval_results/logs/ifeval-smollm2-new.log 2>&1 &
#   eval_results/jobs.sh ifeval-qwen-bf16-report   (seconds: the Qwen 0.5B IFEval test report from stored replies)
#   nohup eval_results/jobs.sh qwen-pasta-heads > eval_results/logs/qwen-pasta-heads.log 2>&1 &   (alone: ~50 min)
# EVAL_CODE=DIR runs the code of another checkout (e.g. a `git worktree` of a fixed commit with
# its built _C copied in), so that editing this tree does not change a queue that is running;
# the results still go to this tree's eval_results/.
# (Edit it by writing a new file and renaming it over this one: a running queue keeps reading the
# file it opened.)
set -u
cd "$(dirname "$0")/.."
if [ -n "${EVAL_CODE:-}" ]; then export PYTHONPATH="$EVAL_CODE/python"; fi
EV=".venv/bin/python -m attnsteer.cli eval"
COMMON="--threads 1 --no-progress"
# Qwen2.5-Coder-0.5B's retention sweep: every grid it measured (reports and test stages name them all)
QWEN_RETENTION_GRIDS=guide,guide-length,guide-upper,guide-prefill,instaboost,spotlight,spotlight-decode,pasta-upper,keyscale,keyscale-ranked,spa
QRQ="$EV sweep --task retention --model qwen2.5-coder-0.5b --out eval_results/qwen/retention-sweep $COMMON --batch-size 4"
QB=eval_results/qwen/ifeval-bf16
# A priority test cell in bfloat16 (batch 8): MODEL FILLER_TOKENS OUT_FOLDER METHOD
priority_bf16() {
  $EV priority --model "$1" --dtype bfloat16 --split test --fillers "$2" --entities 8 --batch-size 8 --out "$3" \
    $COMMON --method "$4"
}
# Only one copy of a queue that several queues chain into: QUEUE_NAME; a second one exits (the lock is held until
# the first one's process, and the queues it chains into, end).
only_one() {
  mkdir -p eval_results/logs
  exec 9> "eval_results/logs/.$1.lock"
  if ! flock -n 9; then echo "$1 is already running in another queue: skipped"; exit 0; fi
}
# Wait while a process whose command line matches PATTERN (pgrep -f) runs.
wait_for() { while pgrep -f "$1" > /dev/null; do sleep 60; done; }
CHOSEN=(guide:delta=1 instaboost:alpha=2 spotlight:target=0.1 pasta:alpha=0.5 "pasta:alpha=0.3,layers=15-29")
case "${1:-}" in
  dev)
    # The rest of the ungated grid, then the plausibility gate around the strongest points
    # (the over-steered ones, which the gate is meant to rescue) and around the best one, and
    # retention at the best dev strength; the remaining gated points last.
    $EV ifeval --split dev --out eval_results/sweep $COMMON --method "pasta:alpha=0.01,layers=15-29"
    for m in gate+guide:delta=2 gate+pasta:alpha=0.2 gate+keyscale:alpha=1.5 gate+spotlight:target=0.3; do
      $EV ifeval --split dev --out eval_results/sweep $COMMON --method "$m"
    done
    $EV retention --docs 1 --rules french,end-phrase --placements system,after --batch-size 4 \
      --out eval_results/retention $COMMON --method keyscale:alpha=1.5 --method guide:delta=1
    for m in gate+instaboost:alpha=5 gate+keyscale:alpha=2 gate+spotlight:target=0.1 gate+guide:delta=1 keyscale:alpha=4; do
      $EV ifeval --split dev --out eval_results/sweep $COMMON --method "$m"
    done ;;
  test)
    # Settings chosen on dev, on the test split in chunks of 100 prompts (every method moves
    # forward together, so a stopped run still compares them on the same prompts).
    $EV ifeval --split test --out eval_results/ifeval $COMMON --method keyscale:alpha=1.5
    for n in 100 200 300 441; do
      args=(); for m in "${CHOSEN[@]}"; do args+=(--method "$m"); done
      $EV ifeval --split test --limit $n --out eval_results/ifeval $COMMON "${args[@]}"
    done ;;
  gated-test)
    # The plausibility gate around the best dev points, on the first test prompts (the gate
    # costs about twice the forwards, so it gets a smaller slice of the test split).
    for n in 100 200 300 441; do
      $EV ifeval --split test --limit $n --out eval_results/ifeval $COMMON \
        --method gate+keyscale:alpha=1.5 --method gate+spotlight:target=0.3
    done ;;
  strategies)
    # The highlight strategies at the best dev point, on dev: the constraint sentences only, and a
    # system message restating the constraints (with its own unsteered baseline).
    $EV ifeval --split dev --out eval_results/sweep $COMMON --strategy constraints --method keyscale:alpha=1.5
    $EV ifeval --split dev --out eval_results/sweep $COMMON --strategy system --method none --method keyscale:alpha=1.5 ;;
  retention)
    # The rule before the document (the long-range case) for every method at its dev-chosen
    # strength; three more documents per length up to 2k tokens (cheap lengths: 8k costs ~90 s
    # a reply here); then the after / system placements for the methods the first runs lacked
    # (they had KeyScale 1.5, GUIDE 1 at 4k/8k and the stronger GUIDE 2 / SpotLight 0.3).
    R="$EV retention --docs 1 --rules french,end-phrase --batch-size 4 --out eval_results/retention $COMMON"
    ALL=(--method none --method keyscale:alpha=1.5 --method guide:delta=1 --method instaboost:alpha=2
      --method spotlight:target=0.1 --method "pasta:alpha=0.3,layers=15-29")
    REST=(--method guide:delta=1 --method instaboost:alpha=2 --method spotlight:target=0.1
      --method "pasta:alpha=0.3,layers=15-29")
    $R --placements before "${ALL[@]}"
    $R --placements before --docs 4 --lengths 512,1024,2048 "${ALL[@]}"
    $R --placements after "${REST[@]}"
    $R --placements system "${REST[@]}" ;;
  retention-sweep-a | retention-sweep-b | retention-sweep-c | retention-sweep-d)
    # Issue 19's retention sweep, in shards that run side by side: the dev grid (rule before
    # 1k-token dev documents, 6 documents x 3 rules = 18 replies a point) split between them;
    # b first runs the unsteered test cells (11 test documents x 3 rules = 33 replies a cell),
    # which do not depend on the dev choice. (a and b ran first; c and d took the grids b had not
    # started, so that the dev grid finished sooner.) The chosen settings' test cells:
    # retention-test-*.
    RS="$EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4"
    TEST="--test-lengths 512,1024,2048 --test-placements before,system"
    case "$1" in
      retention-sweep-a) $RS --shard a --methods guide,guide-length,guide-upper,guide-prefill,instaboost ;;
      retention-sweep-b) $RS --shard b --methods guide --test-only --test-method none $TEST ;;
      retention-sweep-c) $RS --shard c --methods spotlight,spotlight-decode ;;
      retention-sweep-d) $RS --shard d --methods pasta-upper,keyscale,keyscale-ranked ;;
    esac ;;
  retention-test-a | retention-test-b | retention-test-c | retention-report)
    # The dev choice over every grid on the test documents at 512-2k tokens: rule before the
    # document (a) and in the system message (b), side by side; then the length-aware GUIDE's own
    # dev choice before the document (c). retention-report rebuilds sweep.md / test/results.md
    # over every grid and stored test cell, for both models (--report-only: nothing is generated), then
    # copies the tables into docs/results/evaluation.md.
    RS="$EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4 --test-only"
    L="--test-lengths 512,1024,2048"
    case "$1" in
      retention-test-a) $RS --shard a --test-method best $L --test-placements before ;;
      retention-test-b) $RS --shard b --test-method best $L --test-placements system ;;
      retention-test-c) $RS --shard c --test-method grid:guide-length $L --test-placements before ;;
      retention-report)  # every stored test cell (4k: 6 documents), nothing generated
        $RS --report-only --test-method none --test-lengths 512,1024,2048,4096 --test-placements before,system,after
        $EV sweep --task retention --model gemma3-270m --out eval_results/gemma/retention-sweep $COMMON --methods guide --test-only \
          --report-only --test-method none --test-docs 11 --test-lengths 512,1024,2048,4096 --test-placements before
        # Qwen 0.5B's own sweep (its dev choice is the same setting) and its 1k / 2k test cells
        $EV sweep --task retention --model qwen2.5-coder-0.5b --out eval_results/qwen/retention-sweep $COMMON \
          --methods $QWEN_RETENTION_GRIDS \
          --test-only --report-only --test-method best --test-lengths 1024,2048 --test-placements before > /dev/null
        # the models side by side (the README's plot and table): unsteered and the chosen setting
        $EV curves "SmolLM2-135M-Instruct=eval_results/retention-sweep/test/results.json" \
          "Gemma 3 270M (base)=eval_results/gemma/retention-sweep/test/results.json" \
          "Qwen2.5-Coder-0.5B-Instruct=eval_results/qwen/retention-sweep/test/results.json" --placement before \
          --method none --method "spotlight:phases=decode,target=0.1" --out eval_results/retention_models.png \
          --title "Rule before the document, test documents (SpotLight 0.1 on generated rows: SmolLM2's and Qwen's dev choice)"
        # the results page's copies of these tables (each marked with its source)
        .venv/bin/python tools/sync_result_tables.py ;;
    esac ;;
  retention-long)
    # SmolLM2 test cells the first queues lacked: 4k tokens with the rule before the document (6 test
    # documents = 18 replies a cell: a 4k reply costs 100-150 s on the loaded VM), then the rule after
    # the document at 1k / 2k / 512 tokens; unsteered and the dev choice, 33 replies a cell.
    RS="$EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4 --test-only --shard e"
    $RS --test-method none --test-method best --test-lengths 4096 --test-placements before --test-docs 6
    $RS --test-method none --test-method best --test-lengths 1024,2048,512 --test-placements after ;;
  retention-after)
    # The rule after the document at 1k tokens (the easy placement), unsteered and the dev choice.
    $EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4 --test-only --shard g \
      --test-method none --test-method best --test-lengths 1024 --test-placements after ;;
  retention-more)
    # The length-aware GUIDE's dev choice on the test cells (rule before, 512-2k) and the fixed
    # GUIDE's dev choice on the same cells; then Gemma to 11 test documents (33 replies a cell) at
    # 512 / 1k and then 2k.
    RS="$EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4 --test-only --shard f"
    L="--test-lengths 512,1024,2048 --test-placements before"
    $RS --test-method grid:guide-length $L
    $RS --test-method grid:guide $L
    for lengths in 512,1024 2048; do
      $EV sweep --task retention --model gemma3-270m --out eval_results/gemma/retention-sweep $COMMON \
        --batch-size 4 --methods guide --test-only --test-docs 11 --test-lengths $lengths --test-placements before \
        --test-method none --test-method "$(.venv/bin/python -c 'import json; print(json.load(open("eval_results/retention-sweep/sweep.json"))["best"] or "none")')"
    done ;;
  retention-4k)
    # SmolLM2: the 4k-token cells to 11 test documents (33 replies), then the rule after the document
    # at 512 / 2k and 4k tokens, then 4k in the system message; unsteered and the dev choice (shard e,
    # resumes).
    RS="$EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4 --test-only --shard e"
    $RS --test-method none --test-method best --test-lengths 4096 --test-placements before --test-docs 11
    $RS --test-method none --test-method best --test-lengths 512,2048 --test-placements after
    $RS --test-method none --test-method best --test-lengths 4096 --test-placements after
    $RS --test-method none --test-method best --test-lengths 4096 --test-placements system ;;
  retention-length-4k-i | retention-length-4k-j)
    # The length-aware GUIDE's dev choice (i) and the fixed GUIDE's (j) at 4k tokens, rule before the
    # document, side by side (their 512-2k cells: retention-more); unsteered is already stored.
    RS="$EV sweep --task retention --out eval_results/retention-sweep $COMMON --batch-size 4 --test-only"
    case "$1" in
      retention-length-4k-i) $RS --shard i --test-method grid:guide-length --test-lengths 4096 --test-placements before --test-docs 11 ;;
      retention-length-4k-j) $RS --shard j --test-method grid:guide --test-lengths 4096 --test-placements before --test-docs 11 ;;
    esac ;;
  gemma-long)
    # Gemma 3 270M at 2k and then 4k tokens, rule before the document, 11 test documents; unsteered
    # and SmolLM2's dev choice (not re-tuned for Gemma); then the rest of the IFEval test split (chunks).
    BEST="$(.venv/bin/python -c 'import json; print(json.load(open("eval_results/retention-sweep/sweep.json"))["best"] or "none")')"
    for lengths in 2048 4096; do
      $EV sweep --task retention --model gemma3-270m --out eval_results/gemma/retention-sweep $COMMON \
        --batch-size 4 --methods guide --test-only --test-docs 11 --test-lengths $lengths --test-placements before \
        --test-method none --test-method "$BEST"
    done
    $EV ifeval --model gemma3-270m --split test --out eval_results/gemma/ifeval $COMMON --batch-size 4 \
      --max-new-tokens 128 --limit 200 --method none --method keyscale:alpha=1.5
    for n in 300 441; do
      $EV ifeval --model gemma3-270m --split test --out eval_results/gemma/ifeval $COMMON --batch-size 4 \
        --max-new-tokens 128 --limit $n --method none --method keyscale:alpha=1.5
    done ;;
  gemma-ifeval)
    # The second real model, Gemma 3 270M (a base model), on the first test prompts: unsteered and
    # SmolLM2's tuned IFEval setting (not re-tuned for Gemma), 128 new tokens.
    $EV ifeval --model gemma3-270m --split test --out eval_results/gemma/ifeval $COMMON --batch-size 4 \
      --max-new-tokens 128 --limit 100 --method none --method keyscale:alpha=1.5 ;;
  gemma-retention)
    # Gemma on the retention test documents, rule before the document, 6 documents x 3 rules a cell:
    # unsteered and the setting chosen for SmolLM2 (not re-tuned for Gemma).
    $EV sweep --task retention --model gemma3-270m --out eval_results/gemma/retention-sweep $COMMON \
      --batch-size 4 --methods guide --test-only --test-docs 6 --test-lengths 512,1024 --test-placements before \
      --test-method none --test-method "$(.venv/bin/python -c 'import json; print(json.load(open("eval_results/retention-sweep/sweep.json"))["best"] or "none")')" ;;
  strategies-test)
    # The constraints strategy at KeyScale 1.5 on the test split, in chunks of 100 prompts.
    for n in 100 200 300 441; do
      $EV ifeval --split test --limit $n --out eval_results/ifeval $COMMON --strategy constraints \
        --method keyscale:alpha=1.5
    done ;;
  gated-dev)
    # The gated grid points the dev queue had not reached.
    for m in gate+instaboost:alpha=5 gate+guide:delta=1 gate+spotlight:target=0.1 gate+keyscale:alpha=2; do
      $EV ifeval --split dev --out eval_results/sweep $COMMON --method "$m"
    done ;;
  gated-test-more)
    # After gated-dev: the dev-chosen gated points of GUIDE, PASTA and InstABoost on the test split
    # in chunks of 100 prompts (gated KeyScale / SpotLight ran first, being the best dev points).
    # DIRECTER itself at the paper's defaults first (dev only: it is not one of the grids).
    $EV ifeval --split dev --out eval_results/sweep $COMMON --method directer
    $EV sweep --task ifeval --gated --out eval_results/sweep --report-only > /dev/null
    args=()
    for m in $(.venv/bin/python -c "import json; c = json.load(open('eval_results/sweep/sweep.json'))['by_grid']; print(*[c[k] for k in ('gate+guide', 'gate+pasta', 'gate+instaboost') if c.get(k)])"); do
      args+=(--method "$m")
    done
    for n in 100 200 300 441; do
      $EV ifeval --split test --limit $n --out eval_results/ifeval $COMMON "${args[@]}"
    done ;;
  priority-qwen-dev)
    # Context priority on Qwen2.5-Coder-0.5B, dev split (4 relations x 4 entities x 2 markings per
    # placement), no filler between the statements: every method over a strength grid that
    # includes the papers' strengths. Then the dev choice (attnsteer.eval.priority.choose: the best
    # marked rate with no fluency flag, the weaker strength on a tie) goes to .../qwen-dev/sweep.json.
    out=eval_results/priority/qwen-dev
    for m in none guide:delta=2 instaboost:alpha=10 pasta:alpha=0.01 spotlight:target=0.3 keyscale:alpha=100 \
             guide:delta=0.5 guide:delta=1 guide:delta=4 instaboost:alpha=2 instaboost:alpha=5 instaboost:alpha=30 \
             pasta:alpha=0.3 pasta:alpha=0.1 spotlight:target=0.5 spotlight:target=0.8 \
             keyscale:alpha=2,phases=both keyscale:alpha=4,phases=both; do
      $EV priority --model qwen2.5-coder-0.5b --split dev --fillers 0 --entities 4 --out $out $COMMON --method "$m"
    done
    $EV sweep --task priority --model qwen2.5-coder-0.5b --out $out --report-only > /dev/null ;;
  priority-qwen-test)
    # The dev choice and the papers' strengths on the test split at 0 / 512 / 2048 filler tokens.
    out=eval_results/priority/qwen-test
    for f in 0 512 2048; do
      for m in none $(.venv/bin/python -c "import json; print(json.load(open('eval_results/priority/qwen-dev/sweep.json'))['best'] or '')") \
               guide:delta=2 instaboost:alpha=10 pasta:alpha=0.01; do
        $EV priority --model qwen2.5-coder-0.5b --split test --fillers $f --entities 8 --out $out $COMMON --method "$m"
      done
    done ;;
  priority-small)
    # The same test cells on the two small models (how the effect grows with model size).
    for model in smollm2-135m gemma3-270m; do
      for f in 0 512 2048; do
        for m in none guide:delta=2 instaboost:alpha=10 pasta:alpha=0.01; do
          $EV priority --model $model --split test --fillers $f --entities 8 --out eval_results/priority/$model $COMMON --method "$m"
        done
      done
    done ;;
  qwen-ifeval-dev)
    # IFEval dev split (100 prompts) on Qwen2.5-Coder-0.5B: unsteered, the papers' strengths, the
    # priority task's choice and SmolLM2's IFEval choice first, then the rest of the grids.
    out=eval_results/qwen/ifeval-sweep
    for m in none guide:delta=2 instaboost:alpha=10 keyscale:alpha=1.5 pasta:alpha=0.01 spotlight:target=0.3 \
             guide:delta=1 instaboost:alpha=2 spotlight:target=0.1 pasta:alpha=0.1 guide:delta=0.5 instaboost:alpha=5; do
      $EV ifeval --model qwen2.5-coder-0.5b --split dev --batch-size 4 --out $out $COMMON --method "$m"
    done ;;
  priority-qwen-2k)
    # Qwen2.5-Coder-1.5B on the priority test cells without filler (the 0.5B's dev choice, not re-tuned),
    # then the 0.5B's test cells at 2048 filler tokens (unsteered and its dev choice), then the retention
    # sweep on the 0.5B (queue qwen-retention).
    for m in none guide:delta=2; do
      $EV priority --model qwen2.5-coder-1.5b --split test --fillers 0 --entities 8 --batch-size 8 \
        --out eval_results/priority/qwen-1.5b $COMMON --method "$m"
    done
    for m in none guide:delta=2; do
      $EV priority --model qwen2.5-coder-0.5b --split test --fillers 2048 --entities 8 --batch-size 4 \
        --out eval_results/priority/qwen-test $COMMON --method "$m"
    done
    "$0" qwen-retention ;;
  qwen-retention)
    # Rule retention on Qwen2.5-Coder-0.5B: its own dev sweep (rule before a 1k-token document, 6 dev
    # documents x 3 rules; a subset of the grids), then unsteered and the dev choice on the test
    # documents at 1k and 2k tokens (11 documents x 3 rules = 33 replies a cell).
    $EV sweep --task retention --model qwen2.5-coder-0.5b --out eval_results/qwen/retention-sweep $COMMON \
      --batch-size 4 --methods guide,instaboost,spotlight
    $EV sweep --task retention --model qwen2.5-coder-0.5b --out eval_results/qwen/retention-sweep $COMMON \
      --batch-size 4 --methods guide,instaboost,spotlight,keyscale,guide-length
    $EV sweep --task retention --model qwen2.5-coder-0.5b --out eval_results/qwen/retention-sweep $COMMON \
      --batch-size 4 --methods guide,instaboost,spotlight,keyscale,guide-length --test-only \
      --test-method best --test-lengths 1024,2048 --test-placements before ;;
  new-methods-priority)
    # The 2026 methods on Qwen2.5-Coder-0.5B's priority task: SPA's and PRISM-Δ's dev grids (no filler),
    # then the dev choices of SEKA, PRISM-Δ and SPA on the test cells at 0 and 512 filler tokens; then
    # the 2k-token cells (priority-qwen-2k-rest).
    dev=eval_results/priority/qwen-dev
    $EV sweep --task priority --model qwen2.5-coder-0.5b --out $dev $COMMON --methods spa,prism
    $EV sweep --task priority --model qwen2.5-coder-0.5b --out $dev $COMMON --report-only \
      --methods guide,instaboost,pasta,spotlight,keyscale,keyscale-both,seka,prism,spa > /dev/null
    chosen=$(.venv/bin/python -c "import json; c = json.load(open('$dev/sweep.json'))['by_grid']; print(*[c[k] for k in ('seka', 'prism', 'spa') if c.get(k)])")
    for f in 0 512; do
      for m in $chosen; do
        $EV priority --model qwen2.5-coder-0.5b --split test --fillers $f --entities 8 --batch-size 4 \
          --out eval_results/priority/qwen-test $COMMON --method "$m"
      done
    done
    "$0" priority-qwen-2k-rest ;;
  new-methods-ifeval)
    # The 2026 methods on IFEval's dev split (100 prompts, 256 new tokens): SmolLM2 first (its shipped SEKA
    # projection; SPA), then Qwen2.5-Coder-0.5B (SEKA, AdaSEKA, PRISM-Δ, SPA); then the rest of Qwen's
    # retention dev grid (queue qwen-retention's second step).
    $EV sweep --task ifeval --out eval_results/sweep $COMMON --methods seka,spa
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --out eval_results/qwen/ifeval-sweep $COMMON --batch-size 4 \
      --methods seka,spa,adaseka,prism
    $EV sweep --task retention --model qwen2.5-coder-0.5b --out eval_results/qwen/retention-sweep $COMMON \
      --batch-size 4 --methods guide,instaboost,spotlight,keyscale,guide-length ;;
  ifeval-qwen-bf16)
    # Qwen2.5-Coder-0.5B's IFEval dev sweep in bfloat16, batch 8 (~4x faster here than float32 / batch 4; the
    # float32 store, eval_results/qwen/ifeval-sweep, keeps unsteered and GUIDE 2 for comparison): unsteered and
    # GUIDE's grid, then the 2026 key-editing methods, then the remaining grids (breadth-first in each run).
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --methods guide
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON \
      --methods seka,prism,adaseka
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON \
      --methods instaboost,keyscale ;;
  ifeval-qwen-bf16-b)
    # Beside ifeval-qwen-bf16 (its own shard; start it once unsteered is stored): SPA's grid (two forwards a
    # step), then PASTA's and SpotLight's (unless ifeval-qwen-bf16-c is already running them).
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --shard b \
      --methods spa
    "$0" ifeval-qwen-bf16-c ;;
  ifeval-qwen-bf16-c)
    # PASTA's and SpotLight's IFEval dev grids on Qwen 0.5B (shard c; after ifeval-qwen-bf16, or from -b).
    only_one ifeval-qwen-bf16-c
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --shard c \
      --methods pasta,spotlight ;;
  ifeval-qwen-bf16-d)
    # DIRECTER at the paper's defaults on Qwen 0.5B's IFEval dev split (not a grid). It appends to responses.jsonl, so
    # it waits for ifeval-qwen-bf16 (which writes it too) to end. The gated points are ifeval-qwen-bf16-f's.
    wait_for "jobs.sh ifeval-qwen-bf16$"
    $EV ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --split dev --out $QB $COMMON --method directer
    "$0" ifeval-qwen-bf16-dev-report ;;
  ifeval-qwen-bf16-e)
    # PASTA on the upper layers (a default IFEval grid that ifeval-qwen-bf16-c does not run) and PASTA on the
    # shipped head profile, shard d; after ifeval-qwen-bf16-c ends (two cores here).
    wait_for "jobs.sh ifeval-qwen-bf16-c$"
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --shard d \
      --methods pasta-layers,pasta-heads
    "$0" ifeval-qwen-bf16-dev-report ;;
  ifeval-qwen-bf16-f)
    # InstABoost alpha 10 (the paper's strength) ties SPA omega 2 on Qwen 0.5B's IFEval dev split (27 %, no flag; the
    # tie rule keeps SPA, the weaker setting). Its first 100 test prompts ran first (22 vs 25 % unsteered, flagged
    # repetitive); now the gate around it and around the flagged points on dev (after ifeval-qwen-bf16-d's DIRECTER
    # point: both append to responses.jsonl, hence the wait), then the rest
    # of its test cell in chunks of 100 prompts, paired with the stored unsteered test replies.
    wait_for "method directer"
    "$0" ifeval-qwen-bf16-gated
    for n in 100 200 300 441; do
      $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON \
        --methods instaboost --test-only --limit $n --test-method instaboost:alpha=10
    done
    "$0" ifeval-qwen-bf16-report ;;
  ifeval-qwen-bf16-g)
    # SpotLight target 0.3 (the paper's strength) became Qwen 0.5B's IFEval dev choice when its grid finished: 27 %,
    # no flag, tied with SPA omega 2 and InstABoost alpha 10, the weakest of the three by the tie rule
    # (attnsteer.eval.sweep.strength). Its test cell in chunks of 100 prompts, paired with the stored unsteered
    # test replies (shard g), then the test report over every stored test cell. Two threads: run it alone.
    for n in 100 200 300 441; do
      $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --shard g \
        --methods spotlight --test-only --limit $n --test-method spotlight:target=0.3 --threads 2
    done
    "$0" ifeval-qwen-bf16-report ;;
  ifeval-qwen-bf16-e2)
    # Session 20, core 1: PASTA's remaining IFEval dev grids (queue -e), then half of Qwen's retention dev grids
    # that never ran (queue qwen-retention-rest-a).
    "$0" ifeval-qwen-bf16-e
    "$0" qwen-retention-rest-a ;;
  ifeval-qwen-bf16-h)
    # Session 20, core 2: queue -f's gated IFEval dev points (without its InstABoost-10 test rest: that setting is
    # flagged repetitive on its first 140 test prompts and cannot be chosen), then the other half of the retention grids.
    "$0" ifeval-qwen-bf16-gated
    "$0" qwen-retention-rest-b ;;
  qwen-retention-s21-a | qwen-retention-s21-b)
    # Session 21: the rest of Qwen 0.5B's retention dev grids rebalanced over the two cores (queue -rest-b put
    # the small models' 2k priority cells first). Core 1: shard a's grids (guide-prefill 2, PASTA 0.1 upper),
    # then SPA (shard c); core 2: SpotLight decode-only and KeyScale on ranked layers (shard b), then Gemma's
    # 2k priority cells. Each ends with the report over every grid measured.
    case "$1" in
      qwen-retention-s21-a)
        $QRQ --shard a --methods guide-length,guide-upper,guide-prefill,pasta-upper > /dev/null
        $QRQ --shard c --methods spa > /dev/null ;;
      qwen-retention-s21-b)
        $QRQ --shard b --methods spotlight-decode,keyscale-ranked > /dev/null ;;
    esac
    $QRQ --report-only --methods $QWEN_RETENTION_GRIDS > /dev/null
    if [ "$1" = qwen-retention-s21-b ]; then "$0" priority-small-2k; fi ;;
  qwen-retention-s21-c)
    # Core 1 after queue -s21-a (every dev grid measured by then): the dev choice and unsteered on the 33 test
    # replies at 1k tokens (shard e), beside -s21-d's 2k cells.
    wait_for "jobs.sh qwen-retention-s21-a$"
    $QRQ --shard e --methods $QWEN_RETENTION_GRIDS \
      --test-only --test-method best --test-lengths 1024 --test-placements before > /dev/null ;;
  qwen-retention-s21-d)
    # Core 2 after shard b's grids: unsteered on the test documents at 2k tokens (shard d; needs no dev choice),
    # then, once queue -s21-a has measured the last dev grid, the dev choice there; then Gemma's 2k priority cells.
    wait_for "shard b --methods spotlight-decode"
    $QRQ --shard d --methods $QWEN_RETENTION_GRIDS --test-only --test-method none --test-lengths 2048 --test-placements before > /dev/null
    wait_for "jobs.sh qwen-retention-s21-a$"
    $QRQ --shard d --methods $QWEN_RETENTION_GRIDS --test-only --test-method best --test-lengths 2048 --test-placements before > /dev/null
    "$0" priority-small-2k ;;
  qwen-retention-rest-a | qwen-retention-rest-b)
    # The retention dev grids queue qwen-retention did not run on Qwen2.5-Coder-0.5B (float32, batch 4, the same
    # 18 dev cases), as two shards side by side; each ends with the report over every grid measured.
    case "$1" in
      qwen-retention-rest-a) $QRQ --shard a --methods guide-length,guide-upper,guide-prefill,pasta-upper > /dev/null ;;
      qwen-retention-rest-b)
        # the small models' 2k-filler priority cells first (cheap; the effect-against-distance plot lacks them)
        "$0" priority-small-2k
        $QRQ --shard b --methods spotlight-decode,keyscale-ranked,spa > /dev/null ;;
    esac
    $QRQ --report-only --methods $QWEN_RETENTION_GRIDS > /dev/null ;;
  ifeval-qwen-bf16-gated)
    # The plausibility gate around Qwen 0.5B's IFEval dev points that tie the top or were flagged (queues -f, -h),
    # then the dev report.
    for m in gate+instaboost:alpha=10 gate+keyscale:alpha=1.5 gate+guide:delta=2 gate+instaboost:alpha=5; do
      $EV ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --split dev --out $QB $COMMON --method "$m"
    done
    "$0" ifeval-qwen-bf16-dev-report ;;
  ifeval-qwen-bf16-dev-report)
    # The dev report over every grid measured (each sweep run reports the grids it was given; the gated points
    # and DIRECTER join as the extra grids where they were measured); nothing generated.
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --report-only \
      --methods guide,instaboost,spotlight,pasta,pasta-layers,keyscale,pasta-heads,spa,seka,prism,adaseka > /dev/null ;;
  ifeval-qwen-bf16-spa-test)
    # The test cells that do not wait for the other grids: unsteered and SPA's dev choice (omega 2: omega 3 was
    # flagged "unlikely" on the dev prompts it had) on the test prompts in chunks of 100, so that they move
    # forward together and a stopped run still compares them on the same prompts; then SPA omega 3's dev rest.
    # Omega 1.5 beside it: omega 2 sat at the fluency bound on dev (NLL +0.50) and crossed it on the first 100
    # test prompts (+0.51, "unlikely"); 1.5 is the grid's next point (+6.0 on dev, NLL +0.17).
    # Two queues chain into it (ifeval-smollm2-new, ifeval-qwen-bf16-new-test): a lock lets only one run it.
    only_one ifeval-qwen-bf16-spa-test
    for n in 100 200 300 441; do
      $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --shard b \
        --methods spa --test-only --limit $n --test-method spa:omega=2 --test-method spa:omega=1.5
    done
    "$0" ifeval-qwen-bf16-b ;;
  ifeval-qwen-bf16-new-test)
    # The 2026 key-editing methods' dev choices (SEKA 0.4, PRISM-Δ 0.4, AdaSEKA 1.0 on dev) on the IFEval test
    # prompts in chunks of 100, paired with the unsteered replies ifeval-qwen-bf16-spa-test stores (shard b);
    # then SPA's test cells (unless the SmolLM2 queue has already started them).
    for n in 100 200 300 441; do
      $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON \
        --methods seka,prism,adaseka --test-only --limit $n \
        --test-method grid:seka --test-method grid:prism --test-method grid:adaseka
    done
    "$0" ifeval-qwen-bf16-spa-test ;;
  ifeval-qwen-bf16-report)
    # The test report over every stored test cell (each queue's chunk rewrites test/results.md for its own methods
    # and --limit); nothing generated.
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON \
      --methods seka,prism,adaseka,spa --test-only --report-only --limit 441 \
      --test-method grid:seka --test-method grid:prism --test-method grid:adaseka \
      --test-method spa:omega=2 --test-method spa:omega=1.5 --test-method instaboost:alpha=10 \
      --test-method spotlight:target=0.3 ;;
  priority-qwen-bf16)
    # Qwen2.5-Coder-0.5B's priority test cells in bfloat16 (batch 8; a float32 prompt of 2k filler tokens costs
    # ~40 s of one core here): unsteered and GUIDE 2 at 512 filler tokens (beside the float32 cells: does the
    # dtype change the result?), then at 2048; the small models' 2k cells; then SPA omega 2 at 2048 (two
    # forwards a step); then SmolLM2's IFEval queue.
    for f in 512 2048; do
      for m in none guide:delta=2; do priority_bf16 qwen2.5-coder-0.5b $f eval_results/priority/qwen-test-bf16 "$m"; done
    done
    "$0" priority-small-2k
    priority_bf16 qwen2.5-coder-0.5b 2048 eval_results/priority/qwen-test-bf16 spa:omega=2
    "$0" ifeval-smollm2-new ;;
  priority-small-2k)
    # SmolLM2 and Gemma 3 270M at 2048 filler tokens (unsteered, GUIDE 2; float32 like their other cells), so
    # that the effect-against-distance plot has the 2k point for every model.
    for model in smollm2-135m gemma3-270m; do
      for m in none guide:delta=2; do
        $EV priority --model $model --split test --fillers 2048 --entities 8 --out eval_results/priority/$model $COMMON --method "$m"
      done
    done ;;
  ifeval-qwen15-test)
    # Qwen2.5-Coder-1.5B on the IFEval test prompts at the 0.5B's dev choice (SPA omega 2, not re-tuned) beside
    # unsteered, bfloat16, in growing chunks so that a stopped run still pairs them on the same prompts
    # (~25 s a prompt unsteered, twice that with SPA's two forwards, one core here).
    # After the first 25 prompts, the 1.5B's priority cells in bfloat16 (0 filler tokens beside the float32 cell,
    # then 512) run first: cheaper, and the effect-against-distance plot lacks the 1.5B's 512 point.
    for n in 25 50 100 200 441; do
      $EV ifeval --model qwen2.5-coder-1.5b --dtype bfloat16 --batch-size 8 --split test --limit $n \
        --out eval_results/qwen-1.5b/ifeval-bf16 $COMMON --method none --method spa:omega=2
      if [ $n = 25 ]; then "$0" priority-qwen15-bf16; fi
    done ;;
  priority-qwen15-bf16)
    for f in 0 512; do
      for m in none guide:delta=2; do priority_bf16 qwen2.5-coder-1.5b $f eval_results/priority/qwen-1.5b-bf16 "$m"; done
    done ;;
  ifeval-smollm2-new)
    # SmolLM2's IFEval dev grids for SEKA and SPA (float32, the folder of its other grids), then their dev choices
    # and unsteered on the test prompts in chunks of 100 (the 2026 methods' IFEval cells on the small model).
    $EV sweep --task ifeval --out eval_results/sweep $COMMON --methods seka,spa
    for n in 100 200 300 441; do
      $EV sweep --task ifeval --out eval_results/sweep $COMMON --methods seka,spa --test-only --limit $n \
        --test-method grid:spa --test-method grid:seka
    done
    "$0" ifeval-qwen-bf16-spa-test ;;
  qwen-pasta-heads)
    # PASTA's head profile for Qwen2.5-Coder-0.5B in bfloat16 (24 layers x 6 examples, one batch-of-14 forward
    # each: ~50 minutes alone in float32, ~4x less in bfloat16). Not resumable. Then name the file in
    # attnsteer.specs.SHIPPED_HEADS and run the priority grid pasta-heads:
    #   $EV sweep --task priority --model qwen2.5-coder-0.5b --out eval_results/priority/qwen-dev $COMMON --methods pasta-heads
    .venv/bin/python examples/profile_pasta_heads.py --model qwen2.5-coder-0.5b --dtype bfloat16 \
      --out python/attnsteer/data/pasta_heads_qwen2.5_coder_0.5b.json ;;
  qwen-pasta-heads-priority)
    # The priority dev grid with the shipped head profile (queue qwen-pasta-heads made it), float32 like the
    # other dev grids, then the reports over every grid.
    $EV sweep --task priority --model qwen2.5-coder-0.5b --out eval_results/priority/qwen-dev $COMMON --methods pasta-heads
    "$0" priority-dev-report ;;
  ifeval-qwen-bf16-test)
    # Once the bfloat16 dev grids are complete: the dev choice over every grid and each 2026 method's own dev
    # choice on the 441 test prompts (paired with unsteered), then the report with intervals.
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --dtype bfloat16 --batch-size 8 --out $QB $COMMON --test-only \
      --methods guide,instaboost,pasta,spotlight,keyscale,seka,prism,adaseka,spa \
      --test-method best --test-method grid:spa --test-method grid:seka --test-method grid:adaseka --test-method grid:prism ;;
  ifeval-qwen-new)
    # The 2026 methods on Qwen2.5-Coder-0.5B's IFEval dev split one point at a time (a whole grid costs hours
    # here, ~40 s a prompt): SEKA 0.4 / 0.8, PRISM-Δ 0.4, AdaSEKA 0.5, then SPA ω = 2 (two forwards a step),
    # then the rest of the grids (new-methods-ifeval's Qwen step).
    out=eval_results/qwen/ifeval-sweep
    for m in seka:gain=0.4,layers=14-23,projection=qwen2.5-coder-0.5b seka:gain=0.8,layers=14-23,projection=qwen2.5-coder-0.5b \
             prism:gain=0.4,gain_value=0.2,layers=14-23,projection=qwen2.5-coder-0.5b-prism \
             adaseka:experts=qwen2.5-coder-0.5b,gain=0.5,layers=14-23 spa:omega=2; do
      $EV ifeval --model qwen2.5-coder-0.5b --split dev --batch-size 4 --out $out $COMMON --method "$m"
    done
    $EV sweep --task ifeval --model qwen2.5-coder-0.5b --out $out $COMMON --batch-size 4 --methods seka,spa,adaseka,prism ;;
  spa-rest)
    # The last SPA 512-filler priority replies on Qwen2.5-Coder-0.5B, SmolLM2's SPA 512-filler cells, then
    # SmolLM2's IFEval dev grid for SPA (new-methods-ifeval's first step; SEKA's points are done).
    $EV priority --model qwen2.5-coder-0.5b --split test --fillers 512 --entities 8 --batch-size 4 \
      --out eval_results/priority/qwen-test $COMMON --method spa:omega=2
    "$0" priority-small-new
    $EV sweep --task ifeval --out eval_results/sweep $COMMON --methods seka,spa ;;
  priority-small-new)
    # The 2026 methods on SmolLM2's priority test cells (0 and 512 filler tokens), at Qwen2.5-Coder-0.5B's dev
    # choices (not re-tuned): SEKA gain 0.8 on the last 10 layers with SmolLM2's shipped projection, SPA ω = 2.
    for f in 0 512; do
      for m in seka:gain=0.8,layers=20-29,projection=smollm2-135m spa:omega=2; do
        $EV priority --model smollm2-135m --split test --fillers $f --entities 8 --out eval_results/priority/smollm2-135m \
          $COMMON --method "$m"
      done
    done ;;
  priority-qwen-dev-more)
    # The rest of issue 30's priority dev sweep on Qwen2.5-Coder-0.5B: DIRECTER at the paper's defaults and the
    # plausibility gate around the strongest points (no filler, dev split).
    dev=eval_results/priority/qwen-dev
    for m in directer gate+guide:delta=2 gate+instaboost:alpha=10 gate+pasta:alpha=0.1; do
      $EV priority --model qwen2.5-coder-0.5b --split dev --fillers 0 --entities 4 --out $dev $COMMON --method "$m"
    done ;;
  adaseka-priority)
    # AdaSEKA (the shipped experts) on Qwen2.5-Coder-0.5B's priority task: its dev grid (no filler), then its
    # dev choice on the test cells at 0 and 512 filler tokens.
    dev=eval_results/priority/qwen-dev
    $EV sweep --task priority --model qwen2.5-coder-0.5b --out $dev $COMMON --methods adaseka
    chosen=$(.venv/bin/python -c "import json; print(json.load(open('$dev/sweep.json'))['by_grid'].get('adaseka') or '')")
    "$0" priority-dev-report
    for f in 0 512; do
      for m in $chosen; do
        $EV priority --model qwen2.5-coder-0.5b --split test --fillers $f --entities 8 --batch-size 4 \
          --out eval_results/priority/qwen-test $COMMON --method "$m"
      done
    done ;;
  priority-dev-report)
    # Qwen2.5-Coder-0.5B's priority dev report over every grid measured (a sweep run with --methods reports
    # only the grids it was given), then the test reports and the models side by side.
    $EV sweep --task priority --model qwen2.5-coder-0.5b --out eval_results/priority/qwen-dev $COMMON --report-only \
      --methods guide,instaboost,pasta,pasta-heads,spotlight,keyscale,keyscale-both,seka,adaseka,prism,spa > /dev/null
    .venv/bin/python tools/priority_report.py > /dev/null ;;
  priority-qwen-2k-rest)
    # (new-methods-priority chains here; AdaSEKA's cells, added after it started, run first.)
    "$0" adaseka-priority
    # Qwen2.5-Coder-0.5B's test cells at 2048 filler tokens: unsteered and GUIDE 2 (the dev choice).
    for m in none guide:delta=2; do
      $EV priority --model qwen2.5-coder-0.5b --split test --fillers 2048 --entities 8 --batch-size 4 \
        --out eval_results/priority/qwen-test $COMMON --method "$m"
    done ;;
  *) echo "usage: $0 dev|test|gated-test|strategies|retention|gated-dev|gated-test-more|strategies-test" >&2; exit 2 ;;
esac
