"""The generation options of `torchslim optimize`, and the command that runs them."""
from __future__ import annotations

import os
import sys

EXAMPLES = ("smollm2",)


def add_arguments(o) -> None:
    g = o.add_argument_group("text generation (causal LMs: hf:DIR with a *ForCausalLM, or a .gguf file)")
    g.add_argument("--task", choices=["text-generation"], default=None, help="treat --model as a causal LM to generate with")
    g.add_argument("--example", choices=EXAMPLES, default=None, help="a built-in generation example: smollm2 (SmolLM2-135M-Instruct GGUF)")
    g.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    g.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt, greedy, EOS ignored (default 64)")
    g.add_argument("--batch-size", type=int, default=1, help="prompts generated together (default 1)")
    g.add_argument("--large-batch", type=int, default=4, help="also time this larger batch (default 4; 0: no)")
    g.add_argument("--prompts", default=None, help="prompts file, one per line (default: built-in real prompts)")
    g.add_argument("--max-ppl-increase", type=float, default=5.0, help="largest allowed perplexity increase in percent (default 5)")


def wants_generation(args) -> bool:
    from .load import is_generation_spec

    if getattr(args, "example", None):
        return True
    return bool(args.model) and (args.task == "text-generation" or is_generation_spec(args.model))


def cmd_generate(args) -> int:
    from .load import load_causal_lm, smollm2_gguf
    from .report import format_generation_table
    from .search import GenerationConfig, optimize_generation

    if args.example and args.model:
        from ..errors import SlimError

        raise SlimError("--example and --model are exclusive", "pass one of them")
    spec = smollm2_gguf() if args.example == "smollm2" else args.model
    out = args.out or os.path.join("torchslim-out", args.example or "generation")
    config = GenerationConfig(
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, batch_size=args.batch_size, large_batch=args.large_batch,
        prompts=args.prompts, max_ppl_increase=args.max_ppl_increase,
        recipes=tuple(s.strip() for s in args.recipes.split(",") if s.strip()) if args.recipes else None,
        rounds=5 if args.rounds == 15 else args.rounds,  # 15 single calls is optimize's default; 5 generations here
        device=args.device if args.device != "auto" else "cpu" if not _cuda() else "cuda",
        threads=args.threads, out=out, debug=args.debug)
    lm = load_causal_lm(spec, task=args.task)
    run = optimize_generation(lm, config, progress=not args.no_progress)
    print(format_generation_table(run.to_dict()))
    print(f"\nwrote {out}/results.json, {out}/report.html" + (f", {run.artifact}/ and {out}/reproduce.py" if run.artifact else ""))
    if not run.chosen:
        print("no recipe beat the baseline under the thresholds; nothing was saved", file=sys.stderr)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
