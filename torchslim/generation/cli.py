"""Text generation's own command line (`torchslim optimize --task text-generation`, `--example smollm2`):
its options, what it refuses of the forward-pass search's, and the run. `torchslim.cli.tasks` finds this
module (a workload package's `cli.py`) and `cli/optimize.py` hands it the parsed arguments, so no
surface outside this package names the task. Imports no torch at module level: the parser is built
before any model is loaded."""
from __future__ import annotations

import os
import sys

from ..cli import options
from ..errors import SlimError

TASK = "text-generation"  # --task; results.json and torchslim.json "task" (generation.search.TextGeneration.task)
EXAMPLES = ("smollm2",)
BUDGET_MIN = 10.0  # generation.search.DEFAULT_TIME_BUDGET_MIN (not imported: the parser loads no torch)
# options of the forward-pass search that text generation does not have, and why (refused, exit 2)
NOT_FOR_GENERATION = {
    "min_cosine": ("--min-cosine", "text generation is judged by perplexity and greedy agreement, not output cosine; "
                                   "use --max-drop / --max-ppl-increase (percent)"),
    "no_fallback": ("--no-fallback", "the generation search has no float fallback to turn off; drop it"),
    "fallback_max_layers": ("--fallback-max-layers", "the generation search has no float fallback; drop it"),
    "fresh": ("--fresh", "the generation search keeps no cache of earlier searches: it always searches anew; drop it"),
    "input_shape": ("--input-shape", "text generation feeds token ids of --prompt-len; drop it"),
    "dtype": ("--dtype", "text generation feeds token ids; drop it"),
    "inputs": ("--inputs", "text generation builds its prompts from --prompts; drop it"),
    "eval": ("--eval", "text generation's task metric is perplexity on built-in text; use --max-drop for its limit"),
    "weights": ("--weights", "a causal LM's weights come from its hf:DIR folder or .gguf file; drop it"),
    "calib_data": ("--calib-data", "the generation recipes calibrate on built-in text; drop it"),
    "keep_float": ("--keep-float", "a saved generation model is rebuilt from its own weights file; drop it"),
}
GENERATION_ONLY = ("prompt_len", "new_tokens", "batch_size", "large_batch", "prompts", "max_ppl_increase")


def add_options(parser) -> None:
    """Its option group on `torchslim optimize`."""
    g = parser.add_argument_group("text generation (causal LMs: hf:DIR with a *ForCausalLM, or a .gguf file)")
    g.add_argument("--example", choices=EXAMPLES, default=None,
                   help="a built-in generation example: smollm2 (SmolLM2-135M-Instruct GGUF)")
    g.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 128)")
    g.add_argument("--new-tokens", type=int, default=None, help="tokens generated per prompt, greedy, EOS ignored (default 64)")
    g.add_argument("--batch-size", type=int, default=None, help="prompts generated together (default 1)")
    g.add_argument("--large-batch", type=int, default=None, help="also time this larger batch (default 4; 0: no)")
    g.add_argument("--prompts", default=None, help="prompts file, one per line (default: built-in real prompts)")
    g.add_argument("--max-ppl-increase", type=float, default=None, help="largest allowed perplexity increase in percent (default 5)")


def refuse_own_options(args) -> None:
    """A run that is not text generation given one of its options: one line, exit 2."""
    given = [f"--{k.replace('_', '-')}" for k in GENERATION_ONLY if getattr(args, k) is not None]
    if given:
        raise SlimError(f"{', '.join(given)} apply to text generation only, and this model is not run as a causal LM",
                        f"pass --task {TASK} with an hf:DIR causal LM (or a .gguf file), or drop them")


def wants(args) -> bool:
    """Whether the command line asks for text generation: --example, --task text-generation, or a
    --model that is a causal LM (a .gguf file, an hf:DIR whose architecture is *ForCausalLM)."""
    from .load import is_generation_spec

    if args.example:
        return True
    return bool(args.model) and (args.task == TASK or is_generation_spec(args.model))


def run(args) -> int:
    import torch

    from .load import load_causal_lm, smollm2_gguf
    from .memory import preflight
    from .report import format_generation_table
    from .search import optimize_generation

    if args.example and args.model:
        raise SlimError("--example and --model are exclusive", "pass one of them")
    spec = smollm2_gguf() if args.example == "smollm2" else args.model
    out = args.out or os.path.join(options.DEFAULT_OUT, args.example or "generation")
    config = generation_config(args, out, device=args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    plan = preflight(spec, config)  # GGUF header, context, memory: refused before any weight is loaded
    if config.recipes:  # unknown names refused before loading too
        from .. import device as dev
        from .search import by_name

        by_name(list(config.recipes), dev.resolve(config.device))
    lm = load_causal_lm(spec, task=args.task, dtype=plan["baseline"]["dtype"] if plan else "fp32")
    run = optimize_generation(lm, config, progress=not args.no_progress, plan=plan)
    print(format_generation_table(run.to_dict()))
    print(f"\nwrote {out}/results.json, {out}/report.html" + (f", {run.artifact}/ and {out}/reproduce.py" if run.artifact else ""))
    if not run.chosen:
        print("no recipe beat the baseline under the thresholds; nothing was saved", file=sys.stderr)
    return 0


def generation_config(args, out: str | None, device: str = "cpu"):
    """The GenerationConfig the options describe; an option of the forward-pass search that does not
    apply to generation is refused (SlimError) rather than ignored."""
    from .search import GenerationConfig

    for key, (flag, why) in NOT_FOR_GENERATION.items():
        if getattr(args, key, None) not in (None, False):
            raise SlimError(f"{flag} does not apply to text generation: {why.split('; ')[0]}", why.split("; ")[-1])
    ppl = args.max_ppl_increase
    if args.max_drop is not None:  # generation's task metric: perplexity, its drop = the increase in percent
        if ppl is not None and ppl != args.max_drop:
            raise SlimError(f"--max-drop {args.max_drop:g} and --max-ppl-increase {ppl:g} disagree (for text generation both "
                            "are the perplexity increase in percent)", "pass one of them")
        ppl = args.max_drop
    given = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
             "large_batch": args.large_batch, "max_ppl_increase": ppl, "rounds": args.rounds, "objective": args.objective}
    return GenerationConfig(
        **{k: v for k, v in given.items() if v is not None}, prompts=args.prompts, recipes=options.recipe_names(args),
        time_budget=BUDGET_MIN if args.time_budget is None else args.time_budget, exhaustive=args.exhaustive,
        device=device, threads=args.threads, out=out, debug=args.debug)
