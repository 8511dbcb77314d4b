#!/usr/bin/env python3
"""zeroshot_reference.py - the loglikelihood of zero-shot requests computed the
way EleutherAI's lm-evaluation-harness (v0.4.9.2+, HFLM, causal model) computes
it, with PyTorch/transformers in float32, to check `spqr zeroshot` request by
request.

Reference mode (needs torch + transformers; a GPU if there is one):
  python3 scripts/zeroshot_reference.py MODEL_DIR --requests DIR \
      [--tasks arc_easy,...] [--limit N] [--no-bos] --out ref.jsonl

  writes one JSON line per request: {"task", "req", "loglik", "greedy",
  "ctx_tokens", "cont_tokens"} (req counts requests within the task, in file
  order), the same fields `spqr zeroshot --dump FILE` writes.

Compare mode (plain python3):
  python3 scripts/zeroshot_reference.py --compare ours.jsonl ref.jsonl --requests DIR

  prints per task the requests compared, max |d loglik|, token-count
  mismatches, and acc / acc_norm of both with the documents whose prediction
  differs.

lm-eval's procedure reproduced here (lm_eval/api/model.py TemplateLM
.loglikelihood/_encode_pair, lm_eval/models/huggingface.py
HFLM._loglikelihood_tokens): trailing whitespace of the context (str.rstrip)
moves to the continuation; whole = tok.encode(context + continuation),
ctx = tok.encode(context), both with the tokenizer's special tokens (BOS for
LLaMA) unless --no-bos; continuation ids = whole[len(ctx):]; input =
(ctx + cont)[-(max_length + 1):][:-1], right-padded in batches (harmless
under causal attention); log_softmax in float32; the last len(cont) positions
are gathered and summed; greedy = argmax equals every continuation token.
"""
import argparse
import json
import math
import os
import sys
import time

TASKS = "arc_easy,arc_challenge,piqa,hellaswag,winogrande,lambada_openai"


def load_docs(path, limit):
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                docs.append(json.loads(line))
                if limit and len(docs) >= limit:
                    break
    return docs


def encode_pair(tok, context, continuation, add_bos):
    if context == "":
        cont = tok.encode(continuation, add_special_tokens=False)
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation, add_special_tokens=add_bos)
    ctx = tok.encode(context, add_special_tokens=add_bos)
    return ctx, whole[len(ctx):]


def reference(args):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                                     attn_implementation="eager")
    model.to(dev).eval()
    max_length = getattr(model.config, "max_position_embeddings", 2048)
    print(f"torch {torch.__version__}, device {dev}, tokenizer {type(tok).__name__}, max_length {max_length}",
          file=sys.stderr)
    out = open(args.out, "w", encoding="utf-8")
    for task in args.tasks.split(","):
        t0 = time.time()
        docs = load_docs(os.path.join(args.requests, task + ".jsonl"), args.limit)
        reqs = []
        for d in docs:
            for ctx, cont in d["requests"]:
                c, k = encode_pair(tok, ctx, cont, not args.no_bos)
                reqs.append((c, k))
        order = sorted(range(len(reqs)), key=lambda i: -(len(reqs[i][0]) + len(reqs[i][1])))
        res = [None] * len(reqs)
        with torch.no_grad():
            for b0 in range(0, len(order), args.batch):
                idx = order[b0:b0 + args.batch]
                inps = [(reqs[i][0] + reqs[i][1])[-(max_length + 1):][:-1] for i in idx]
                L = max(len(x) for x in inps)
                batch = torch.zeros((len(inps), L), dtype=torch.long)
                for r, x in enumerate(inps):
                    batch[r, :len(x)] = torch.tensor(x, dtype=torch.long)
                logits = model(batch.to(dev)).logits
                logp = F.log_softmax(logits.float(), dim=-1)
                for r, i in enumerate(idx):
                    cont = reqs[i][1]
                    n = len(inps[r])
                    lp = logp[r, n - len(cont):n]
                    ct = torch.tensor(cont, dtype=torch.long, device=dev)
                    greedy = bool((lp.argmax(dim=-1) == ct).all())
                    ll = float(torch.gather(lp, 1, ct.unsqueeze(-1)).sum())
                    res[i] = (ll, greedy)
        for i, (ll, g) in enumerate(res):
            out.write(json.dumps({"task": task, "req": i, "loglik": ll, "greedy": g,
                                  "ctx_tokens": len(reqs[i][0]), "cont_tokens": len(reqs[i][1])}) + "\n")
        out.flush()
        print(f"{task}: {len(docs)} documents, {len(reqs)} requests, {time.time() - t0:.1f} s", file=sys.stderr)
    out.close()


def metrics(docs, ll, greedy):
    """acc, acc_norm (or None), ppl (or None) and per-document predictions."""
    n = len(docs)
    if "gold" not in docs[0]:
        acc = sum(greedy[:n]) / n
        ppl = math.exp(-sum(ll[:n]) / n)
        return acc, None, ppl, [int(g) for g in greedy[:n]]
    hit = hit_n = 0
    preds = []
    shared = all(len({c for c, _ in d["requests"]}) == 1 for d in docs)
    k = 0
    for d in docs:
        m = len(d["requests"])
        lls = ll[k:k + m]
        chars = d.get("choice_chars") or [len(c[1:] if c.startswith(" ") else c) for _, c in d["requests"]]
        best = max(range(m), key=lambda i: (lls[i], -i))
        best_n = max(range(m), key=lambda i: (lls[i] / chars[i], -i))
        hit += best == d["gold"]
        hit_n += best_n == d["gold"]
        preds.append((best, best_n))
        k += m
    return hit / n, (hit_n / n if shared else None), None, preds


def compare(args):
    def read(path):
        by = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                by.setdefault(r["task"], []).append(r)
        return by

    ours, ref = read(args.compare[0]), read(args.compare[1])
    worst = 0.0
    for task in ref:
        if task not in ours:
            continue
        a, b = ours[task], ref[task]
        n = min(len(a), len(b))
        d = [abs(a[i]["loglik"] - b[i]["loglik"]) for i in range(n)]
        tokdiff = sum(a[i]["ctx_tokens"] != b[i]["ctx_tokens"] or a[i]["cont_tokens"] != b[i]["cont_tokens"]
                      for i in range(n))
        gdiff = sum(a[i]["greedy"] != b[i]["greedy"] for i in range(n))
        worst = max(worst, max(d))
        docs = load_docs(os.path.join(args.requests, task + ".jsonl"), 0)
        nd, k = 0, 0
        while nd < len(docs) and k + len(docs[nd]["requests"]) <= n:
            k += len(docs[nd]["requests"])
            nd += 1
        docs = docs[:nd]
        ma = metrics(docs, [r["loglik"] for r in a], [r["greedy"] for r in a])
        mb = metrics(docs, [r["loglik"] for r in b], [r["greedy"] for r in b])
        flips = sum(x != y for x, y in zip(ma[3], mb[3]))
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        print(f"{task:15s} docs {nd:6d} requests {n:6d} max|dlogL| {max(d):.2e} mean {sum(d) / n:.2e} "
              f"token-count diffs {tokdiff} greedy diffs {gdiff} | acc {fmt(ma[0])} vs {fmt(mb[0])} "
              f"acc_norm {fmt(ma[1])} vs {fmt(mb[1])} ppl {fmt(ma[2])} vs {fmt(mb[2])} | documents whose "
              f"prediction differs: {flips}")
    print(f"max |dlogL| over all tasks: {worst:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("--requests", required=True)
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--limit", type=int, default=0, help="first N documents per task (0 = all)")
    ap.add_argument("--no-bos", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2, metavar=("OURS", "REF"))
    args = ap.parse_args()
    if args.compare:
        compare(args)
    elif args.model and args.out:
        reference(args)
    else:
        ap.error("give MODEL and --out, or --compare OURS REF")


if __name__ == "__main__":
    main()
