"""Terminal output of decoded texts and their figures (rich: plain text when not a terminal)."""

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lmlab.decoding.evaluate import DecodeResult


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
