"""`helixrun plot`'s figure: loss, evaluation metrics, learning rate and throughput against the step."""

from __future__ import annotations

# A bare Figure, not pyplot: no global backend or figure registry, and savefig draws with Agg.
from matplotlib.figure import Figure

from helixrun.cli.runs.views import Curves


def plot_curves(curves: Curves, title: str) -> Figure:
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    (ax_loss, ax_eval), (ax_lr, ax_tps) = axes
    fig.suptitle(title)

    ax_loss.plot(curves.steps, curves.loss, label="train loss", linewidth=1)
    if "loss" in curves.eval:
        xs, ys = curves.eval["loss"]
        ax_loss.plot(xs, ys, "o-", label="eval loss", markersize=3)
    ax_loss.set(title="Loss", xlabel="step", ylabel="loss (nats)")
    ax_loss.legend(loc="best")

    others = {k: v for k, v in curves.eval.items() if k != "loss"}
    for metric, (xs, ys) in sorted(others.items()):
        ax_eval.plot(xs, ys, "o-", label=metric, markersize=3)
    ax_eval.set(title="Evaluation metrics", xlabel="step", ylabel="value")
    if others:
        ax_eval.legend(loc="best")
    else:
        ax_eval.text(0.5, 0.5, "no evaluation metrics besides loss", ha="center", va="center", transform=ax_eval.transAxes)

    ax_lr.plot(curves.steps, curves.lr, color="tab:green", linewidth=1)
    ax_lr.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    ax_tps.plot(curves.steps, curves.tokens_per_second, color="tab:orange", linewidth=1)
    ax_tps.set(title="Throughput", xlabel="step", ylabel="tokens/s")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig
