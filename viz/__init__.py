"""Drawing a Trace: the draft tree of one cycle, the answer's tokens, and whole-run charts.

    from viz import tree_figure, charts, tokens_html
    fig = tree_figure(trace, cycle=3)              # Plotly figure, NetworkX layout
"""

from .data import CycleView, cycle_view, display_token, token_spans, tested_nodes
from .tree_figure import stage_caption, stage_names, tree_figure

__all__ = ["CycleView", "cycle_view", "display_token", "token_spans", "tested_nodes", "tree_figure",
           "stage_names", "stage_caption"]
