"""ginformer.viz.attention_graphs and `ginformer graph` on tiny random models: a GINformer (GIN and standard
layers), a plain transformers Llama and a Sparse-GIN-adapted Llama, checked against naive per-head attention written out here."""

import json
import math

import matplotlib.image
import networkx as nx
import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from reference import naive_adjacency, naive_rollout

from ginformer import GinformerConfig, GinformerForCausalLM
from ginformer.cli import main
from ginformer.adapter import SparseGINConfig, SparseGINModel, get_sparse_gin_model
from ginformer.adapter.model import decoder_layers
from ginformer.attention import GraphAttention
from ginformer.data.tokenizer import build_protein_tokenizer
from ginformer.errors import ConfigError, DataError, ModelRefused
from ginformer.viz import draw
from ginformer.viz.attention_graphs import STAGES, SparseSettings, adjacency_graph, attention_graphs

TINY = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TEXT = "MKTAYIAKQRQISFVKSH"  # 18 residues, one token each


def ginformer(**overrides):
    torch.manual_seed(0)
    model = GinformerForCausalLM(GinformerConfig(**TINY, attention_kind=["standard", "gin"], **overrides))
    with torch.no_grad():
        model.model.layers[1].self_attn.sharpening.fill_(1.7)  # a learned α ≠ 1, which the adjacency must show
    return model


def llama(**overrides):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))


def adapted(**config):
    torch.manual_seed(0)
    # ramp: λ > 0, so layer 1's attention already sees layer 0's adapter
    return get_sparse_gin_model(llama(), SparseGINConfig(d_gnn=8, scale_init="ramp", **config))


MODELS = {"ginformer": ginformer, "llama": llama, "adapted": adapted}


@pytest.fixture(scope="module")
def tokenizer():
    return build_protein_tokenizer()


def naive_adjacencies(model, token_ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every layer's (H, T, T) adjacency, one head at a time, from the hidden states that enter the layer."""
    base = model.get_base_model() if isinstance(model, SparseGINModel) else model
    with torch.no_grad():
        hidden_states = model(input_ids=token_ids, output_hidden_states=True).hidden_states
        result = {}
        for k, layer in enumerate(decoder_layers(base)):
            attn, x = layer.self_attn, layer.input_layernorm(hidden_states[k])
            t, heads, d = x.shape[1], base.config.num_attention_heads, attn.head_dim
            q = attn.q_proj(x).view(1, t, heads, d).transpose(1, 2)
            key = attn.k_proj(x).view(1, t, -1, d).transpose(1, 2)
            cos, sin = base.model.rotary_emb(x, torch.arange(t)[None])
            q, key = apply_rotary_pos_emb(q, key, cos, sin)
            per_head = []
            for h in range(heads):
                scores = q[0, h] @ key[0, h * key.shape[1] // heads].T / math.sqrt(d)
                if isinstance(attn, GraphAttention):
                    per_head.append(naive_adjacency(scores, base.config, attn))
                else:
                    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
                    per_head.append(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
            result[k] = torch.stack(per_head)
    return result


@pytest.mark.parametrize("kind", MODELS)
def test_adjacency_per_layer_and_head_matches_naive_attention(kind, tokenizer):
    model = MODELS[kind]()
    graphs = attention_graphs(model, tokenizer, TEXT)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    expected = naive_adjacencies(model, ids)
    assert graphs.layers == [0, 1]
    assert graphs.tokens == list(TEXT) and graphs.token_ids == ids[0].tolist()
    for layer, heads in graphs.heads.items():
        assert heads.shape == (4, len(TEXT), len(TEXT))
        torch.testing.assert_close(heads, expected[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(graphs.summed(layer), expected[layer].sum(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_softmax_rows_sum_to_one_and_no_edge_points_back_in_time(kind, tokenizer):
    graphs = attention_graphs(MODELS[kind](), tokenizer, TEXT)
    for heads in graphs.heads.values():
        torch.testing.assert_close(heads.sum(-1), torch.ones(heads.shape[:2]))
        assert torch.count_nonzero(torch.triu(heads, diagonal=1)) == 0


def test_sigmoid_gin_layers_give_their_own_adjacency(tokenizer):
    model = ginformer(adjacency_activation="sigmoid", refinement="threshold", refinement_threshold=0.3)
    graphs = attention_graphs(model, tokenizer, TEXT, layers=[1])
    expected = naive_adjacencies(model, tokenizer(TEXT, return_tensors="pt")["input_ids"])[1]
    torch.testing.assert_close(graphs.heads[1], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(graphs.heads[1].sum(-1), torch.ones(4, len(TEXT)))  # sigmoid rows need not sum to 1
    assert "GIN-Attention" in graphs.kinds[1] and "sigmoid" in graphs.kinds[1]


@pytest.mark.parametrize("kind", MODELS)
def test_the_model_is_left_as_it_was(kind, tokenizer):
    model = MODELS[kind]()
    model.train()
    base = model.get_base_model() if isinstance(model, SparseGINModel) else model
    implementation = base.config._attn_implementation
    attention_graphs(model, tokenizer, TEXT)
    assert model.training and base.config._attn_implementation == implementation
    for layer in decoder_layers(base):
        assert not layer.self_attn._forward_pre_hooks and not hasattr(layer.self_attn, "_ginformer_probe")
        assert len(layer.self_attn._forward_hooks) == (1 if kind == "adapted" else 0)  # the adapter's own hook


def test_stages_of_an_adapted_model_rebuild_the_graph_its_adapter_used(tokenizer):
    model = adapted(top_k=3, tau=0.1, edge_threshold=0.6)
    graphs = attention_graphs(model, tokenizer, TEXT)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), model.capture_adjacency() as used:
        model(input_ids=ids)
    for layer_graph in used:
        k = layer_graph.layer
        # the adapter's chunked head aggregation agrees with the per-head probabilities summed here
        torch.testing.assert_close(graphs.summed(k).clamp(max=1.0), layer_graph.aggregated[0], atol=1e-5, rtol=1e-4)
        settings = graphs.settings(k)
        assert (settings.alpha, settings.tau) == pytest.approx((10.0, 0.1))  # read back from float32 buffers
        assert (settings.epsilon, settings.top_k, settings.self_loops_only) == (0.6, 3, False)
        stages = graphs.stages(k)
        assert list(stages) == list(STAGES)
        torch.testing.assert_close(stages["causal mask"], layer_graph.adjacency[0])


def test_stages_apply_sharpening_threshold_then_causality(tokenizer):
    graphs = attention_graphs(llama(), tokenizer, TEXT, layers=[0])
    settings = SparseSettings(alpha=10.0, tau=0.1, epsilon=0.6)
    stages = graphs.stages(0, settings)
    aggregated = stages["sum and clamp"]
    torch.testing.assert_close(aggregated, graphs.summed(0).clamp(max=1.0))
    sharpened = torch.sigmoid(10.0 * (aggregated - 0.1))
    torch.testing.assert_close(stages["sigmoid sharpening"], sharpened)
    future = torch.ones_like(aggregated, dtype=torch.bool).triu(1)
    assert (stages["sigmoid sharpening"][future] > 0).all()  # before the causal mask the future is not empty
    torch.testing.assert_close(stages["ε-threshold"], sharpened * (sharpened > 0.6))
    torch.testing.assert_close(stages["causal mask"], torch.tril(stages["ε-threshold"]))
    assert graphs.settings(0) == SparseSettings.from_config(SparseGINConfig())  # an unadapted model: the defaults


def test_window_crops_every_matrix_and_keeps_positions(tokenizer):
    model = llama()
    full = attention_graphs(model, tokenizer, TEXT)
    for window, (start, stop) in {(4, 10): (4, 10), (-6, None): (12, 18)}.items():
        part = attention_graphs(model, tokenizer, TEXT, window=window)
        assert part.offset == start and part.tokens == list(TEXT[start:stop])
        assert part.positions == list(range(start, stop))
        torch.testing.assert_close(part.heads[1], full.heads[1][:, start:stop, start:stop])
        assert sorted(part.to_networkx(1)) == list(range(start, stop))


def naive_block_max(matrix: torch.Tensor, block: int) -> torch.Tensor:
    """(..., T, T) -> (..., R, R), R = ceil(T / block): the largest entry of each block × block square, cell by cell."""
    size = matrix.shape[-1]
    cells = -(-size // block)
    result = torch.zeros(*matrix.shape[:-2], cells, cells)
    for row in range(cells):
        for col in range(cells):
            square = matrix[..., row * block : (row + 1) * block, col * block : (col + 1) * block]
            result[..., row, col] = square.amax(dim=(-2, -1))
    return result


def test_overview_holds_block_maxima_of_the_whole_text(tokenizer):
    model = adapted(top_k=3, tau=0.1)
    whole = attention_graphs(model, tokenizer, TEXT)
    with torch.no_grad(), model.capture_adjacency() as used:
        model(input_ids=tokenizer(TEXT, return_tensors="pt")["input_ids"])
    part = attention_graphs(model, tokenizer, TEXT, window=(4, 10), overview=5)  # 18 tokens: cells of 4, 5 a side
    overview = part.overview
    assert (overview.block, overview.size, overview.tokens) == (4, 5, list(TEXT))
    assert part.length == len(TEXT) and len(part.tokens) == 6
    for layer_graph in used:
        k = layer_graph.layer
        torch.testing.assert_close(overview.heads[k], naive_block_max(whole.heads[k], 4))
        torch.testing.assert_close(overview.adjacency[k], naive_block_max(layer_graph.adjacency[0], 4))
        settings = part.settings(k)
        pooled, exact = overview.stages(k, settings), whole.stages(k, settings)
        for name in list(STAGES)[:3]:  # block maxima commute with the sigmoid and the ε-threshold
            torch.testing.assert_close(pooled[name], naive_block_max(exact[name], 4))
        assert part.scalars[k] == pytest.approx({"λ": model.adapters[k].scale.item(), "α": 10.0, "τ": 0.1, "ε": 0.2})


def test_rollout_of_the_window_and_of_the_whole_text_follow_the_recipe(tokenizer):
    model = llama(num_hidden_layers=3)
    whole = attention_graphs(model, tokenizer, TEXT)
    expected = naive_rollout([whole.heads[k] for k in range(3)])
    graphs = attention_graphs(model, tokenizer, TEXT, layers=[1, 2], window=(5, 15), overview=6, rollout=True)
    assert graphs.layers == [1, 2] and sorted(graphs.rollout) == [1, 2]  # layer 0 is read, not kept
    for k in (1, 2):
        torch.testing.assert_close(graphs.rollout[k], expected[k][5:15, 5:15], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(graphs.overview.rollout[k], naive_block_max(expected[k], 3), atol=1e-5, rtol=1e-4)


def test_an_adapted_model_read_without_its_adapter_is_its_base(tokenizer):
    model = adapted()
    without = attention_graphs(model, tokenizer, TEXT, with_adapter=False)
    base = attention_graphs(llama(), tokenizer, TEXT)  # the same seed: the adapted model's base weights
    for k in base.layers:
        torch.testing.assert_close(without.heads[k], base.heads[k])
    assert not without.aggregated and not without.scalars and not without.sparse_settings
    with torch.no_grad():
        ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
        assert not torch.allclose(model(input_ids=ids).logits, llama()(input_ids=ids).logits)  # the adapter acts


def test_an_attention_kernel_the_capture_cannot_rebuild_is_refused(tokenizer):
    def louder_sdpa(module, *args, **kwargs):
        output, weights = sdpa_attention_forward(module, *args, **kwargs)
        return output * 1.5, weights

    AttentionInterface.register("tests_louder_sdpa", louder_sdpa)
    AttentionMaskInterface.register("tests_louder_sdpa", sdpa_mask)
    model = llama()
    model.set_attn_implementation("tests_louder_sdpa")
    with pytest.raises(ModelRefused, match="layer 0: the attention probabilities recomputed .* do not reproduce"):
        attention_graphs(model, tokenizer, TEXT)
    assert model.config._attn_implementation == "tests_louder_sdpa"
    assert not any(hasattr(layer.self_attn, "_ginformer_probe") for layer in decoder_layers(model))


def test_bad_requests_fail_clearly(tokenizer):
    model = llama(max_position_embeddings=16)
    with pytest.raises(DataError, match=r"18 tokens.*context of 16"):
        attention_graphs(model, tokenizer, TEXT)
    with pytest.raises(ConfigError, match="layer 2 out of range: the model has 2 layers"):
        attention_graphs(model, tokenizer, "MKT", layers=[2])
    with pytest.raises(ConfigError, match=r"window \(5, 3\)"):
        attention_graphs(model, tokenizer, "MKTAYI", window=(5, 3))
    with pytest.raises(DataError, match="text is empty"):
        attention_graphs(model, tokenizer, "")
    with pytest.raises(ConfigError, match="overview must be at least 1 cell"):
        attention_graphs(model, tokenizer, "MKT", overview=0)
    graphs = attention_graphs(model, tokenizer, "MKT", layers=[-1])
    assert graphs.layers == [1]
    with pytest.raises(ValueError, match="layer 0 was not captured"):
        graphs.summed(0)
    with pytest.raises(ValueError, match="head 4 out of range"):
        graphs.head(1, 4)


def test_graph_edges_carry_the_adjacency_and_top_k_keeps_the_strongest(tokenizer):
    graphs = attention_graphs(llama(), tokenizer, TEXT, layers=[1])
    matrix = graphs.head(1, 2)
    full = graphs.to_networkx(1, head=2)
    assert full.number_of_nodes() == len(TEXT)
    assert full.number_of_edges() == int(torch.count_nonzero(matrix))
    for j, i, data in full.edges(data=True):
        assert j <= i and data["weight"] == pytest.approx(float(matrix[i, j]))
    assert full.nodes[3] == {"label": TEXT[3], "position": 3, "token_id": graphs.token_ids[3]}

    pruned = graphs.to_networkx(1, head=2, top_k=2)
    for i in range(len(TEXT)):
        incoming = {j for j, _ in pruned.in_edges(i) if j != i}
        strongest = set(matrix[i, :i].topk(min(2, i)).indices.tolist()) if i else set()
        assert incoming == strongest
        assert pruned.has_edge(i, i)  # the self-loop stays
    with pytest.raises(ValueError, match="top_k"):
        adjacency_graph(matrix, graphs.tokens, top_k=0)


def test_export_round_trips_through_graphml_and_json(tokenizer, tmp_path):
    graphs = attention_graphs(llama(), tokenizer, TEXT, layers=[0])
    graphml, as_json = graphs.export(tmp_path / "layer0", 0, top_k=3)
    expected = graphs.to_networkx(0, top_k=3)
    from_json = nx.node_link_graph(json.loads(as_json.read_text()), edges="edges")
    from_graphml = nx.read_graphml(graphml, node_type=int)
    for graph in (from_json, from_graphml):
        assert graph.is_directed()
        assert sorted(graph.edges) == sorted(expected.edges)
        assert graph.graph["layer"] == 0 and graph.graph["source"] == "sum over heads"
        for u, v, data in expected.edges(data=True):
            assert graph.edges[u, v]["weight"] == pytest.approx(data["weight"])
        assert graph.nodes[5]["label"] == TEXT[5]


def test_graph_command_writes_every_figure_and_graph(tokenizer, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    ginformer().save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    out = tmp_path / "graphs"
    argv = ["--model", str(run_dir), "--text", TEXT, "--layer", "1", "--head", "2", "--window", "2:14", "--out", str(out)]
    assert main(["graph", *argv]) == 0

    expected = {
        f"layer01_{name}.{ext}"
        for name in ("heads", "head2", "summed", "stages", "graph")
        for ext in ("png", "svg")
    } | {f"layer01_{name}.{ext}" for name in ("graph", "sparse") for ext in ("graphml", "json")} | {"manifest.json"}
    assert {path.name for path in out.iterdir()} == expected
    listing = capsys.readouterr().out
    for name in expected:
        assert name in listing
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokens"] == list(TEXT[2:14]) and manifest["window"] == [2, 14]
    assert set(manifest["files"]) == expected
    image = matplotlib.image.imread(out / "layer01_summed.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
    sparse = nx.node_link_graph(json.loads((out / "layer01_sparse.json").read_text()), edges="edges")
    assert sparse.graph["epsilon"] == SparseGINConfig().edge_threshold
    assert all(u <= v for u, v in sparse.edges)


def test_graph_command_arguments(capsys):
    assert draw.parse_window("3:9") == (3, 9)
    assert draw.parse_window("-20:") == (-20, None)
    assert draw.parse_window(":5") == (0, 5)
    with pytest.raises(SystemExit):
        main(["graph", "--text", "x", "--window", "3-9"])
    assert "must look like START:STOP" in capsys.readouterr().err
    assert draw.slug("smollm2", "The cat sat on the mat!") == "smollm2-the-cat-sat-on-the-mat"
    assert draw.slug("runs/demo/model", "Hi", adapter="a") == "demo-adapted-hi"
    assert len(draw.slug("m", "word " * 40)) <= 48
    with pytest.raises(ConfigError, match="--top-k must be >= 1"):
        draw.draw_attention_graphs(draw.GraphRequest(text="x", top_k=0))


def test_graph_command_sends_texts_too_long_for_figures_to_the_explorer(tokenizer, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "runs" / "tiny"
    ginformer().save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    monkeypatch.setattr(draw, "MAX_FIGURE_TOKENS", 10)
    assert main(["graph", "--model", str(run_dir), "--text", TEXT, "--out", str(tmp_path / "out")]) == 2
    assert "18 tokens are too many for figures" in capsys.readouterr().err and not (tmp_path / "out").exists()
    argv = ["graph", "--model", str(run_dir), "--text", TEXT, "--window", "0:10", "--out", str(tmp_path / "w")]
    assert main(argv) == 0
