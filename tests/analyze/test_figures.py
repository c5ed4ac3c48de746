import numpy as np

from emomoe.analyze.clusters import ClusterConfig
from emomoe.analyze.figures import draw_figures, figure_files, shown_layers
from emomoe.analyze.modularity import model_summary
from tests.analyze.conftest import routed_layer, separable_routing


def test_shown_layers_follow_the_paper():
    assert shown_layers(3) == [0, 1, 2]
    assert shown_layers(16) == [0, 5, 10, 15]  # the paper's np.linspace(0, 15, 4)


def test_models_of_different_depth_and_width_are_drawn(tmp_path):
    layers, docs = separable_routing()
    deep = [routed_layer(i, layers[i % 2].prefix_probs_TE, layers[i % 2].prefix_experts_TK, docs) for i in range(6)]
    wide = [routed_layer(i, np.tile(r.prefix_probs_TE, 2) / 2, r.prefix_experts_TK, docs) for i, r in enumerate(layers)]
    cfg = ClusterConfig(num_clusters=2)
    overlap = {"0.5": {"domains": ["a", "b"], "num_kept": [1], "jaccard": [[[1, 0], [0, 1]]],
                       "mean_off_diagonal": [0.0], "random_baseline": None}}
    analysis = {
        "domains": docs.domains,
        "models": {name: model_summary(r, docs, docs, cfg, None, 2) for name, r in (("deep", deep), ("wide/6", wide))},
        "subset_overlap": {"deep": overlap, "wide/6": {"0.25": overlap["0.5"]}},
    }
    draw_figures(tmp_path, analysis)
    files = figure_files(analysis)
    assert files["maps:wide/6"] == "domain_expert_wide_6.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files.values())
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in files.values())
