"""ginformer.viz.explorer and `ginformer graph --html` without a browser: what the page holds, how its matrices are
stored and bounded, and the errors for bad requests. tests/test_explorer_browser.py opens the pages in Chromium."""

import base64
import json
import re
import zlib

import pytest
import torch

from test_attention_graphs import TINY, adapted, ginformer, llama

from ginformer.cli import main
from ginformer.data.tokenizer import build_protein_tokenizer
from ginformer.errors import ConfigError
from ginformer.viz.attention_graphs import attention_graphs
from ginformer.viz.explorer import Capture, decode_matrices, encode_matrices, explore, explorer_page

TEXT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVK"  # 60 residues, one token each


@pytest.fixture(scope="module")
def tokenizer():
    return build_protein_tokenizer()


def page_data(html: str) -> tuple[dict, list[bytes]]:
    """The JSON description and the raw (decompressed) blobs of a page, as its script reads them."""
    data = json.loads(re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', html, re.S)[1])
    blobs = re.findall(r'<script type="application/octet-stream" id="blob-(\d+)">(.*?)</script>', html, re.S)
    assert [int(index) for index, _ in blobs] == list(range(len(data["blobs"])))
    return data, [zlib.decompress(base64.b64decode(payload)) for _, payload in blobs]


def test_uint8_keeps_every_weight_within_its_matrix_maximum_over_255():
    generator = torch.Generator().manual_seed(0)
    matrices = torch.rand(3, 20, 20, generator=generator) ** 4 * torch.tensor([1.0, 0.01, 9.0])[:, None, None]
    raw, description = encode_matrices(matrices, "uint8")
    assert len(raw) == matrices.numel()  # one byte a weight
    back = decode_matrices(raw, description)
    largest = matrices.flatten(1).amax(1)[:, None, None]
    assert ((back - matrices).abs() <= largest / 255).all()
    weak = matrices < largest * 1e-3  # the square-root scale resolves weak edges far better than a linear one
    assert ((back - matrices).abs()[weak] <= largest.expand_as(matrices)[weak] * 1e-3).all()
    raw16, description16 = encode_matrices(matrices, "float16")
    assert len(raw16) == 2 * matrices.numel()
    torch.testing.assert_close(decode_matrices(raw16, description16), matrices.half().float())
    with pytest.raises(ConfigError, match="negative entries: use float16"):
        encode_matrices(-matrices, "uint8")


def test_page_is_self_contained_and_holds_every_layer_and_head(tokenizer):
    graphs = attention_graphs(ginformer(), tokenizer, TEXT, overview=16, rollout=True)
    page = explorer_page([Capture("tiny", graphs)])
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page.html)  # nothing loaded from elsewhere
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page.html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # an XML namespace for SVG elements, never fetched
    data, blobs = page_data(page.html)
    (capture,) = data["captures"]
    assert capture["layers"] == [0, 1] and capture["heads"] == [0, 1, 2, 3]
    assert capture["scalars"] == {"1": pytest.approx({"α": 1.7})}  # the learned α of the GIN layer
    assert data["overview"]["block"] == 4 and len(data["overview"]["tokens"]) == len(TEXT)
    for layer in (0, 1):
        entry = capture["data"][str(layer)]
        window = decode_matrices(blobs[entry["heads"]["window"]], data["blobs"][entry["heads"]["window"]])
        assert ((window - graphs.heads[layer]).abs() <= graphs.heads[layer].amax() / 255).all()
        overview = entry["heads"]["overview"]
        assert data["blobs"][overview]["shape"] == [4, 15, 15]
        assert set(entry) == {"heads", "rollout"}  # no adapter: no stages
    assert page.stored == sum(len(raw) for raw in blobs)


def test_the_stored_size_is_bounded_by_the_options(tokenizer):
    model = llama(num_hidden_layers=3)
    cells, window = 10, 24

    def stored(heads=None, layers=None, precision="uint8"):
        graphs = attention_graphs(model, tokenizer, TEXT, layers=layers, window=(0, window), overview=cells)
        return explorer_page([Capture("m", graphs)], heads=heads, precision=precision).stored

    per_head = window**2 + cells**2  # the window at full resolution, the whole text in cells (60 tokens: 6 each)
    assert stored() == 3 * 4 * per_head
    assert stored(heads=[1, 3]) == 3 * 2 * per_head
    assert stored(layers=[0]) == 4 * per_head
    assert stored(precision="float16") == 2 * 3 * 4 * per_head


def test_an_adapted_model_is_shown_beside_its_base_with_its_stages(tokenizer):
    model = adapted(tau=0.1)
    page = explore(model, tokenizer, TEXT, name="tiny", overview=20, progress=False)
    data, blobs = page_data(page.html)
    base, with_adapter = data["captures"]
    assert (base["name"], with_adapter["name"]) == ("tiny (base)", "tiny")
    assert not base["scalars"] and set(with_adapter["scalars"]["1"]) == {"λ", "α", "τ", "ε"}
    assert "stages" not in base["data"]["1"]
    graphs = attention_graphs(model, tokenizer, TEXT)
    stages = with_adapter["data"]["1"]["stages"]
    window = decode_matrices(blobs[stages["window"]], data["blobs"][stages["window"]])
    expected = torch.stack(list(graphs.stages(1).values()))
    assert ((window - expected).abs() <= 1 / 255 + 1e-6).all()  # every stage lies in [0, 1]
    assert data["blobs"][stages["overview"]]["shape"] == [4, 20, 20]
    assert page.captures == ["tiny (base)", "tiny"] and page.window == (0, len(TEXT))


def test_captures_side_by_side_must_share_their_tokens(tokenizer):
    one = attention_graphs(llama(), tokenizer, TEXT)
    with pytest.raises(ValueError, match="captured on different texts"):
        explorer_page([Capture("a", one), Capture("b", attention_graphs(llama(), tokenizer, TEXT[:-1]))])
    with pytest.raises(ValueError, match="keep different windows"):
        explorer_page([Capture("a", one), Capture("b", attention_graphs(llama(), tokenizer, TEXT, window=(2, 9)))])
    with pytest.raises(ConfigError, match=r"head 4 out of range: a has 4 heads per layer \(0–3\)"):
        explorer_page([Capture("a", one)], heads=[4])
    with pytest.raises(ValueError, match="precision must be one of"):
        explorer_page([Capture("a", one)], precision="int4")


@pytest.fixture
def run_dirs(tmp_path, tokenizer):
    """A pretraining run of a tiny GINformer (standard and GIN layers)."""
    scratch = tmp_path / "runs" / "gin"
    ginformer().save_pretrained(scratch / "model")
    tokenizer.save_pretrained(scratch / "model")
    return scratch


def test_graph_command_writes_the_page_and_states_its_size(run_dirs, tmp_path, capsys):
    out = tmp_path / "page"
    argv = ["graph", "--model", str(run_dirs), "--text", TEXT, "--html", "--window", "4:40", "--overview", "12"]
    assert main([*argv, "--heads", "0,2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [path.name for path in out.iterdir()] == ["explorer.html"]
    size = (out / "explorer.html").stat().st_size
    assert "layers 0–1, 60 tokens, window 4:40" in printed
    assert f"{size / 1e3:.0f} kB, self-contained: 1 capture (gin) × 2 layers × 2 heads" in printed
    assert "tokens 4–39 at full resolution, the whole text in cells of 5×5 tokens" in printed
    data, _ = page_data((out / "explorer.html").read_text())
    assert data["captures"][0]["heads"] == [0, 2] and data["offset"] == 4 and len(data["tokens"]) == 36


def test_a_fine_tuned_run_shows_the_adapter_beside_its_base(base_dir, tmp_path, capsys):
    from ginformer.adapter import SparseGINConfig, get_sparse_gin_model
    from ginformer.pretrained import load_base_model

    base, tokenizer = load_base_model(str(base_dir))
    run = tmp_path / "runs" / "sparse_gin"
    get_sparse_gin_model(base, SparseGINConfig(d_gnn=8)).save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    out = tmp_path / "page"
    assert main(["graph", "--model", str(run), "--text", "Tom has 3 apples.", "--html", "--out", str(out)]) == 0
    name = base_dir.name
    assert f"2 captures ({name}, {name} + sparse_gin)" in capsys.readouterr().out
    data, _ = page_data((out / "explorer.html").read_text())
    assert [bool(capture["scalars"]) for capture in data["captures"]] == [False, True]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "2"], "layer 2 out of range: the model has 2 layers"),
        (["--heads", "0,4"], r"head 4 out of range: gin has 4 heads per layer \(0–3\)"),
        (["--head", "1"], "--head sets the figures, not the explorer page"),
        (["--overview", "0"], "overview must be at least 1 cell"),
    ],
)
def test_bad_page_requests_fail_in_one_line(run_dirs, tmp_path, capsys, extra, message):
    argv = ["graph", "--model", str(run_dirs), "--text", TEXT, "--html", "--out", str(tmp_path / "p"), *extra]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ginformer graph: error: ") and re.search(message, error)


def test_a_lora_run_is_not_taken_for_a_sparse_gin_one(tmp_path, capsys):
    adapter = tmp_path / "runs" / "lora" / "adapter"
    adapter.mkdir(parents=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": "smollm2"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(["graph", "--model", str(adapter.parent), "--text", TEXT, "--html"]) == 2
    assert "holds a peft adapter, not a Sparse-GIN one: its attention graphs are its base's (--model smollm2)" in (
        capsys.readouterr().err
    )
    (adapter / "adapter_config.json").write_text('{"peft_type": "LO')  # a copy cut short
    assert main(["graph", "--model", str(adapter.parent), "--text", TEXT, "--html"]) == 2
    err = capsys.readouterr().err
    assert "adapter_config.json is not valid JSON" in err and "Traceback" not in err


def test_page_options_need_html(run_dirs, tmp_path, capsys):
    assert main(["graph", "--model", str(run_dirs), "--text", TEXT, "--compare", str(run_dirs)]) == 2
    assert "--compare is for the explorer page: add --html" in capsys.readouterr().err


def test_a_text_past_the_context_names_both_lengths(run_dirs, capsys):
    assert main(["graph", "--model", str(run_dirs), "--text", TEXT * 2, "--html"]) == 2
    assert f"text is 120 tokens, longer than the model's context of {TINY['max_position_embeddings']}" in (
        capsys.readouterr().err
    )
