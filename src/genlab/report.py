"""Reports: one self-contained HTML page (images inline, opens from disk) and its Markdown twin.

A report is a list of sections; each section holds text, figures and tables. The same list renders to both
formats, so the two never disagree. ``genlab report RUN_DIR ...`` builds one for any runs side by side;
``genlab reproduce`` (genlab.reproduce) builds the lecture's.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from genlab import checkpoint, config as cfgmod, rundir
from genlab.errors import GenlabError


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list]
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Figure or Table

    def text(self, paragraph: str) -> "Section":
        self.blocks.append(paragraph)
        return self

    def figure(self, path: Path, caption: str) -> "Section":
        if Path(path).is_file():
            self.blocks.append(Figure(Path(path), caption))
        return self

    def table(self, headers: list[str], rows: list[list], caption: str = "") -> "Section":
        self.blocks.append(Table(headers, rows, caption))
        return self


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "" if value is None else _text(str(value))


def _text(text: str) -> str:
    """Text as a report shows it: a folder name that is not valid UTF-8 with U+FFFD where its bad bytes were."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav ul{columns:2;padding-left:1.2em} figure{margin:1.2em 0;text-align:center}
figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.9em;color:#555;margin-top:.3em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.caption{font-size:.9em;color:#555} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
"""


def render_html(title: str, sections: list[Section]) -> str:
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><nav><ul>"]
    out += [f"<li><a href='#{s.id}'>{html.escape(s.title)}</a></li>" for s in sections]
    out.append("</ul></nav>")
    for s in sections:
        out.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>")
        for block in s.blocks:
            if isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(block.caption)}'>"
                           f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                cap = f"<caption class='caption'>{html.escape(block.caption)}</caption>" if block.caption else ""
                out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif block.startswith("```"):
                out.append(f"<pre>{html.escape(block.strip('`').strip())}</pre>")
            else:
                out.append(f"<p>{html.escape(block)}</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.blocks:
            if isinstance(block, Figure):
                out += [f"![{block.caption}]({os.path.relpath(block.path, base)})", f"*{block.caption}*", ""]
            elif isinstance(block, Table):
                if block.caption:
                    out += [f"*{block.caption}*", ""]
                out.append("| " + " | ".join(block.headers) + " |")
                out.append("|" + "---|" * len(block.headers))
                out += ["| " + " | ".join(_cell(c).replace("|", "\\|") for c in row) + " |" for row in block.rows]
                out.append("")
            else:
                out += [block, ""]
    return "\n".join(out)


REPORT_TITLE = "genlab report"


def write_report(out_dir: Path, title: str, sections: list[Section]) -> tuple[Path, Path]:
    """Write ``report.md`` then ``report.html`` into ``out_dir``, each atomically, and return (html, md).

    The HTML comes last: a folder holding it holds a whole report (genlab report and reproduce refuse to
    replace one), so a write cut short (a full disk) leaves a folder the same command can finish."""
    out_dir = Path(out_dir)
    with cfgmod.output_folder(out_dir):
        for name, text in (("report.md", render_markdown(title, sections, out_dir)),
                           ("report.html", render_html(title, sections))):
            tmp = out_dir / f".{name}.tmp"
            try:
                tmp.write_text(text, errors="surrogateescape")  # a folder name's odd bytes written back as they were
                tmp.replace(out_dir / name)
            except OSError as e:
                raise GenlabError(f"cannot write {out_dir / name} ({e.strerror or e}); free space (or choose another "
                                  "--out) and run the command again") from None
            finally:
                cfgmod.discard(tmp)
    return out_dir / "report.html", out_dir / "report.md"


# -- sections for plain runs ---------------------------------------------------------------------------------
FIGURE_CAPTIONS = {  # (file name, model or None for any) -> caption; the lecture's figure only where it is one
    ("reconstructions.png", "ae"): "Inputs (top) and reconstructions (bottom), as the lecture's Fig. 3",
    ("reconstructions.png", "ebgan"): "Inputs (top) and the discriminator's reconstructions (bottom): an image's "
                                      "energy is its squared distance to its reconstruction",
    ("reconstructions.png", None): "Inputs (top) and reconstructions (bottom)",
    ("reconstructions_vae.png", None): "Inputs, then their decodings at the mean code z = mu and at a code drawn "
                                       "from q(z|x)",
    ("kernels.png", "ae"): "The first 20 encoder kernels, as the lecture's Fig. 4",
    ("kernels.png", "dae"): "The first 20 encoder kernels, as the lecture's Fig. 6",
    ("kernels.png", None): "The first 20 encoder kernels",
    ("corrupted_inputs.png", None): "Clean inputs, their corruption and the denoised output",
    ("loss_curves.png", None): "Training and test loss terms per epoch",
    ("samples.png", "vae"): "Samples: the decoder's means at codes drawn from the prior N(0, I)",
    ("samples.png", None): "Samples of the generator (its moving average of weights where the run keeps one)",
    ("interpolation.png", None): "Decoded codes along straight lines between the codes of test digits",
    ("energy_hist.png", None): "The discriminator's energies of 500 test digits and of 500 samples, after the "
                               "last epoch",
    ("completions.png", None): "Quadrant completion: the observed quadrants (unseen pixels grey), completions "
                               "drawn from the conditional prior, and the truth (after Sohn et al. 2015, Fig. 4)",
    ("class_grid.png", None): "Samples asked for by class, one row per class 0-9",
    ("manifold.png", None): "The decoder's means over a grid of codes of the 2-d latent space",
}


def _caption(png: Path, model: str | None) -> str | None:
    """A figure's caption in a run's section, or None for one left out: the per-epoch energy histograms of a
    GAN (one an epoch; the last is ``energy_hist.png``, and all stay in the run's ``figures/``)."""
    name = png.name
    if re.fullmatch(r"energy_hist_epoch\d+\.png", name):
        return None
    epoch = re.fullmatch(r"tsne_epoch(\d+)\.png", name)
    if epoch:
        when = f"after epoch {int(epoch.group(1))}" if int(epoch.group(1)) else "before training"
        return (f"t-SNE of the test digits' mean codes {when}, coloured by label (a 1-D code is drawn as it is, "
                "against the label; the lecture's second Fig. 8, whose caption calls them samples)")
    return FIGURE_CAPTIONS.get((name, model), FIGURE_CAPTIONS.get((name, None), png.stem.replace("_", " ")))


NO_CHECKPOINT = "It holds no checkpoint (its weights), so its energies are not measured here"


def run_section(run_dir: Path, title: str | None = None, section_id: str | None = None, say=None) -> Section:
    """A section for one run directory: its final metrics, evaluation, figures and config; ``say``: where a note
    of a run without its checkpoint goes."""
    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    section = Section(section_id or _anchor(run_dir.name), title or f"{config.get('model', '?')}: {run_dir.name}")
    if not os.path.lexists(run_dir / checkpoint.CHECKPOINT):
        section.text(f"{NO_CHECKPOINT}: what follows is from its training log and files alone.")
        if say is not None:
            say(f"note: {run_dir} holds no {checkpoint.CHECKPOINT} (a copy without its weights, or a run that "
                "never finished an epoch): the report shows its training log alone")
    lines = _metrics(run_dir)
    if lines:
        last = lines[-1]
        epochs = f"{last['epoch']} epoch" + ("s" if last["epoch"] != 1 else "")
        section.text(f"{epochs}, {last.get('seconds', 0):.0f} s of training, "
                     f"{last.get('images_per_s', 0):.0f} images/s in the last epoch.")
        section.table(["term", "value"], [[k, v] for k, v in last.items() if "/" in k],
                      "Loss terms after the last epoch (per example; means over pixels for mse terms)")
    data, stale = _evaluation(run_dir, lines)
    if data:
        section.table(["metric", "value"], [[k, v] for k, v in data.items() if isinstance(v, (int, float))],
                      "genlab evaluate")
    elif stale:
        section.text(f"Its evaluation.json is of {stale}, and the run has trained on since: `genlab evaluate "
                     f"{run_dir}` brings it up to date.")
    figures = run_dir / "figures"
    for png in sorted(figures.glob("*.png")) if figures.is_dir() else []:
        if png.name.startswith(".") or png.name.endswith(".tmp.png"):  # a figure being written, or left half-written
            continue
        caption = _caption(png, config.get("model"))
        if caption is not None:
            section.figure(png, caption)
    section.text("```\n" + json.dumps(config, indent=2) + "\n```")
    return section


def _evaluation(run_dir: Path, metrics: list[dict]) -> tuple[dict, str]:
    """``genlab evaluate``'s evaluation.json of the run's checkpoint, and ""; or {} and what the file is of
    when it was made of an earlier checkpoint, so it is not shown as the run's."""
    path = run_dir / "evaluation.json"
    if not path.is_file():
        return {}, ""
    data = cfgmod.read_json(path)
    if not _number(data.get("epoch")):  # an older genlab's, which did not say: shown as it is
        return data, ""
    now = _checkpoint_counters(run_dir) or (metrics[-1] if metrics else {})
    if (data.get("epoch"), data.get("step")) == (now.get("epoch"), now.get("step")):
        return data, ""
    return {}, f"epoch {data['epoch']}, step {data.get('step')}"


def _metrics(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl records of the epochs its checkpoint holds, one an epoch; none where it has no
    such file (a folder or a FIFO there is said). genlab writes a line after its epoch's checkpoint, so a line
    past the checkpoint is a hand edit or another run's: one of "epoch 7" beside a checkpoint of epoch 1 made
    the report say 7 epochs, with that line's numbers."""
    path = run_dir / rundir.METRICS
    records = rundir.read_metrics(path) if os.path.lexists(path) else []
    counters = _checkpoint_counters(run_dir)
    if counters is not None:
        checkpoint.check_settings(run_dir)  # an edited config.json: the run's numbers shown under other settings
        records = [r for r in records if r["epoch"] <= counters["epoch"]]
    return list({r["epoch"]: r for r in records}.values())


def _checkpoint_counters(run_dir: Path) -> dict | None:
    """The counters of the run's checkpoint (a run stopped mid-epoch is past its last metrics line), or None
    where it has none (a copied run: its last metrics line says where it stands). A damaged checkpoint is said:
    the run's evaluation.json would otherwise be shown as the numbers of weights that are gone."""
    if not os.path.lexists(run_dir / checkpoint.CHECKPOINT):
        return None
    return checkpoint.read_counters(run_dir / checkpoint.CHECKPOINT)


def _run_config(run_dir: Path) -> dict:
    path = run_dir / checkpoint.CONFIG
    if not os.path.lexists(path):
        raise GenlabError(f"{run_dir} is not a genlab run directory (no config.json)")
    return cfgmod.read_json(path)  # which names one that is not a regular file (a FIFO would be waited on)


def _anchor(name: str) -> str:
    """An HTML id from a folder name: letters, digits, '_' and '-' only (a quote in a name broke the page)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name) or "run"


def comparison_section(run_dirs: list[Path], device: str = "auto", limit: int = 1000) -> Section:
    """One table, a row per run: what each trained on, for how long, where it ended, and its mean energy on
    (up to ``limit``) test images: from ``genlab evaluate``'s evaluation.json where that holds it, else computed
    here on ``device``."""
    rows = []
    for d in run_dirs:
        config = _run_config(d)
        metrics = _metrics(d)
        last = metrics[-1] if metrics else {}
        evaluation = _evaluation(d, metrics)[0]
        energy, images = evaluation.get("energy"), evaluation.get("images")
        if not (_number(energy) and _number(images) and evaluation.get("split") == "test"):
            energy, images = _mean_test_energy(d, device, limit) or (None, None)
        rows.append([str(d), config.get("model", "?"), config.get("train_config", {}).get("dataset", "?"),
                     last.get("epoch"), last.get("seconds"), last.get("test/loss"), energy, images])
    return Section("runs", "Runs side by side").table(
        ["run", "model", "data set", "epochs", "training s", "test loss", "mean energy", "of test images"], rows,
        "The last epoch's test loss (each model's own objective: compare runs of one model) and the mean energy "
        "of the test images (a conditional model's given their labels); energies compare runs of one model too")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean_test_energy(run_dir: Path, device: str, limit: int) -> tuple[float, int] | None:
    """(mean energy, images) of a run's test images; None where its weights or its data are not here (a copied
    run: the table says nothing). A damaged checkpoint is said, not passed over as a blank."""
    from genlab.data import DataError
    from genlab.evaluate import mean_energy

    if not os.path.lexists(run_dir / checkpoint.CHECKPOINT):
        return None
    run = checkpoint.load_run(run_dir, device=device)
    try:
        data = run.dataset("test")
    except DataError:
        return None
    images = data.images[:limit]
    labels = data.labels[:len(images)] if run.model.conditional else None
    return mean_energy(run.model, images, labels=labels), len(images)


def check_report_folder(out_dir: Path, title: str) -> None:
    """Refuse an --out holding a whole report (its report.html), or a report.md that is not this command's own
    half-written one (``write_report``): genlab report and reproduce replace neither, nor a user's notes."""
    out_dir = Path(out_dir)
    if (out_dir / "report.html").exists():
        raise GenlabError(f"{out_dir} already holds a report; choose another --out or remove it")
    md = out_dir / "report.md"
    if md.exists() or md.is_symlink():
        try:
            with open(md, "rb") as f:
                ours = f.read(len(title.encode()) + 3) == f"# {title}\n".encode()
        except OSError:
            ours = False
        if not ours:
            raise GenlabError(f"{out_dir} holds a report.md that this command did not write; choose another --out "
                              "(genlab replaces no file of yours)")


def report_runs(run_dirs: list[Path], out_dir: Path, device: str = "auto", say=None) -> tuple[Path, Path]:
    """The report of ``run_dirs`` (runs, or folders of them) in ``out_dir``; ``say``: where notes go."""
    check_report_folder(out_dir, REPORT_TITLE)  # as genlab reproduce: never replace a report silently
    run_dirs = checkpoint.find_runs(run_dirs, say)  # a folder genlab reproduce wrote stands for its runs; each once
    sections, ids = [comparison_section(run_dirs, device)], {"runs"}
    for d in run_dirs:
        anchor, k = _anchor(d.name), 2
        while anchor in ids:
            anchor, k = f"{_anchor(d.name)}-{k}", k + 1
        ids.add(anchor)
        sections.append(run_section(d, f"{_run_config(d).get('model', '?')}: {d}", anchor, say))
    return write_report(out_dir, REPORT_TITLE, sections)
