"""How a run of a sweep is named: by the overrides that tell it apart from the others, as typed."""

from __future__ import annotations


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def short_override(override: str) -> str:
    """`optimizer.lr=0.0012345678` -> `optimizer.lr=0.001235`: what a sampler chose, readable."""
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if sep and not value.lstrip("+-").isdigit() else override


def distinguishing(overrides: list[str], swept: list[str] | None) -> list[str]:
    """The overrides that tell a job apart from the others of its sweep (all of them if unknown)."""
    shown = [o for o in overrides if override_key(o) in swept] if swept else overrides
    return [short_override(o) for o in shown]


def job_label(overrides: list[str], swept: list[str] | None) -> str:
    return " ".join(distinguishing(overrides, swept))


def differing_overrides(overrides_per_run: list[list[str]]) -> list[str]:
    """Override keys whose value is not the same in every run (a key some runs lack counts)."""
    keys = []
    for overrides in overrides_per_run:
        keys += [override_key(o) for o in overrides if override_key(o) not in keys]
    values = lambda key: {next((o for o in overrides if override_key(o) == key), None)  # noqa: E731
                          for overrides in overrides_per_run}
    return [key for key in keys if len(values(key)) > 1]
