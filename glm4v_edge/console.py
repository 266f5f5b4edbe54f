"""What the CLI shows: rich progress bars fed by the steps' own ``Progress`` reports, a streamed
reply, and the tables of parity, evaluation and benchmark results."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from glm4v_edge.runtime.variant import Sampling, TokenEvent, Variant, collect

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


class RichProgress:
    """A ``glm4v_edge.progress.Progress`` drawn as one rich bar per task."""

    def __init__(self, bars: Progress):
        self.bars = bars
        self.task = None
        self.bytes_task = None  # the file being written, when a step reports bytes
        self.started = 0

    def start(self, label: str, total: int) -> None:
        self._finish()
        self.task = self.bars.add_task(label, total=total, status="")
        self.total = total
        self.started = 0

    def step(self, status: str) -> None:
        self._drop_bytes()
        self.bars.update(self.task, completed=self.started, status=status)
        self.started += 1

    def written(self, done: int, total: int) -> None:
        if self.bytes_task is None:
            self.bytes_task = self.bars.add_task("  writing", total=total, status=f"{total / 1e9:.2f} GB")
        self.bars.update(self.bytes_task, completed=done, total=total,
                         status=f"{done / 1e9:.2f} / {total / 1e9:.2f} GB")

    def _drop_bytes(self) -> None:
        if self.bytes_task is not None:
            self.bars.remove_task(self.bytes_task)
            self.bytes_task = None

    def warn(self, message: str) -> None:
        errors.print(f"warning: {message}", style="yellow", markup=False)

    def _finish(self) -> None:
        self._drop_bytes()
        if self.task is not None:
            self.bars.update(self.task, completed=self.total, status="done")


@contextmanager
def progress_bars() -> Iterator[RichProgress]:
    bars = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=errors,
    )
    with bars:
        progress = RichProgress(bars)
        try:
            yield progress
        except BaseException:
            bars.live.transient = True  # a failed step leaves its one-line error, not a half bar
            raise
        progress._finish()


def chat_once(variant: Variant, messages: list[dict], sampling: Sampling, *, max_new_tokens: int,
              thinking_budget: int | None, hide_thinking: bool) -> None:
    """``glm4v-edge chat``: one reply, streamed to the terminal; Ctrl-C stops it."""
    stop = threading.Event()
    events = variant.generate(messages, max_new_tokens=max_new_tokens, sampling=sampling,
                              thinking_budget=thinking_budget, stop=stop)
    print_reply(events, variant.name, stop, hide_thinking)


def print_reply(events: Iterable[TokenEvent], variant_name: str, stop: threading.Event,
                hide_thinking: bool = False) -> None:
    """Stream a reply: thinking dimmed, then the answer (boxes bold), then the decode speed.
    Ctrl-C sets ``stop``: the generation ends and what came so far stays on screen."""
    seen, channel = [], None
    try:
        for event in events:
            seen.append(event)
            for piece in event.pieces:
                if piece.channel == "thinking" and hide_thinking:
                    continue
                if channel == "thinking" and piece.channel == "answer" and not hide_thinking:
                    console.print("\n")
                channel = piece.channel
                style = "dim" if piece.channel == "thinking" else ("bold" if piece.in_box else None)
                console.print(piece.text, style=style, end="", markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        stop.set()
        errors.print("\n[interrupted]")
    console.print()
    result = collect(seen)
    if result.first_token_s is not None:
        speed = result.decode_tokens_per_s
        errors.print(f"{len(seen)} tokens · {speed or float('nan'):.1f} tokens/s decode · "
                     f"first token after {result.first_token_s:.2f} s · {variant_name}", style="dim")


def print_parity(title: str, results: dict[str, dict[str, dict]]) -> None:
    """Parity per (precision or variant, prompt): greedy match, top-1 agreement, mean KL."""
    table = Table(title=title)
    for column in ("variant", "prompt", "greedy match", "top-1 agreement", "mean KL"):
        table.add_column(column, justify="left" if column in ("variant", "prompt") else "right")
    for label, prompts in results.items():
        for prompt, result in prompts.items():
            table.add_row(label, prompt, f"{result['greedy_match']}/{result['reference_tokens']}",
                          f"{result['top1_agreement']:.1%}", f"{result['mean_kl']:.2e}")
    console.print(table)


def print_export(manifest: dict, out) -> None:
    parity = manifest["parity"]
    if parity["measured"]:
        print_parity(f"parity against {parity['reference']} · greedy match of {parity['new_tokens']} new tokens",
                     parity["results"])
    else:
        errors.print(f"parity not measured: {parity['reason']}", style="yellow", markup=False)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    console.print(f"wrote {out} ({size / 1e6:.1f} MB); chat with it: glm4v-edge chat \"...\" --variant "
                  f"onnx-{manifest['dtypes'][-1]} --artifacts {out}", soft_wrap=True)


def print_quantized(entry: dict, variant: str, out) -> None:
    """A GPTQ checkpoint's parity table, what vLLM would think of it, and how to use it."""
    from glm4v_edge.quant.vllm import serve_command, vllm_problems

    parity = entry["parity"]
    print_parity(f"parity against the source ({parity['reference']}) · greedy match of {parity['new_tokens']} "
                 "new tokens", {variant: parity["results"]})
    for problem in vllm_problems(entry["quantization_config"]):
        errors.print(f"vLLM: {problem}", style="yellow")
    console.print(f"serve it with vLLM (GPU): {serve_command(str(out))}", soft_wrap=True)
    console.print(f"wrote {out}: {entry['decoder_bits_per_weight']} bits per decoder weight, "
                  f"{len(entry['calibration']['samples'])} calibration samples; chat with it: "
                  f"glm4v-edge chat \"...\" --variant {variant} --artifacts {out.parent}", soft_wrap=True)


def print_eval(report) -> None:
    """A ``bench.task_accuracy.EvalReport`` per question type and overall."""
    table = Table(title=f"held-out exact match · {report.variant}")
    for column in ("question type", "correct", "total", "accuracy"):
        table.add_column(column, justify="left" if column == "question type" else "right")
    for qtype, (right, total) in report.per_type().items():
        table.add_row(qtype, str(right), str(total), f"{right / total:.1%}")
    table.add_row("overall", str(sum(o.correct for o in report.outcomes)), str(len(report.outcomes)),
                  f"{report.accuracy():.1%}", style="bold")
    console.print(table)


def print_bench(record: dict, paths: list) -> None:
    for variant, row in record["summary"].items():
        if row["status"] != "ok":
            errors.print(f"{variant}: {row['status']}: {row['error']}", style="red", markup=False)
    print_written(paths)


def print_written(paths: list) -> None:
    """A report's Markdown (the second path), then every file written."""
    console.print(paths[1].read_text(), markup=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True)
