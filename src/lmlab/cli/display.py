"""Terminal output of decoded texts and their figures (rich: plain text when not a terminal)."""

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lmlab.cli import build
from lmlab.decoding.evaluate import DecodeResult, compiles, evaluate_strategy, named_strategies


def decode_and_print(decoding, name: str, model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                     seed: int) -> list[DecodeResult]:
    """Every strategy of a ``decoding`` node (one strategy called ``name``, or a suite) on the prompts, printed:
    generate.py's output and train.py's end-of-run samples."""
    strategies = named_strategies(build(decoding), name)
    results = [evaluate_strategy(key, decode, model, prompts, max_new_tokens, tokenizer.eos_token_id,
                                 tokenizer.pad_token_id, seed, warmup=compiles(decode))
               for key, decode in strategies.items()]
    print_results(results, tokenizer)
    return results


def print_results(results: list[DecodeResult], tokenizer, console: Console | None = None) -> None:
    console = console or Console()
    for result in results:
        console.rule(f"[bold]{result.name}[/bold] (prompt, then the continuation in bold)")
        for prompt, completion in zip(result.prompts, result.completions, strict=True):
            console.print(Text(tokenizer.decode(prompt)) + Text(tokenizer.decode(completion), style="bold"))
            console.print()
    table = Table(title="decoding figures")
    table.add_column("metric")
    for r in results:
        table.add_column(r.name, justify="right")
    for key in sorted({k for r in results for k in r.metrics}):
        table.add_row(key, *(f"{r.metrics[key]:.4g}" if key in r.metrics else "" for r in results))
    console.print(table)
