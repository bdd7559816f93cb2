"""The page's CSS, JavaScript and help texts."""

from viz.html import CSS as VIZ_CSS

APP_CSS = VIZ_CSS + """
.gradio-container { max-width: 1800px !important; margin: 0 auto; }
#tl-header h1 { margin: 0; font-size: 26px; }
#tl-header p { margin: 2px 0 0; color: #57606a; font-size: 14px; }
#tree-howto p { font-size: 13.5px; color: #57606a; margin: 0; line-height: 1.45; }
#summary .tl-card { padding: 5px 9px; flex-basis: 90px; }
#summary .tl-card .tl-num { font-size: 20px; }
#summary .tl-card.tl-wide .tl-num { font-size: 15px; padding-top: 2px; }
#summary .tl-card .tl-lbl { font-size: 12px; }
.tl-pending { color: #57606a; font-size: 14px; padding: 10px 4px; }
.tl-status { font-size: 14px; padding: 5px 10px; border-radius: 6px; background: #f6f8fa; }
.tl-status.tl-error, .tl-status.tl-warn { background: #fff1f0; color: #a40e26; border: 1px solid #ffccc7; }
.tl-status.tl-ok { background: #effaf1; }
.tl-status.tl-busy { background: #fff8e6; }
.tl-banner { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 6px 10px; }
table.tl-cmp { border-collapse: collapse; font-size: 15px; width: 100%; }
table.tl-cmp th, table.tl-cmp td { border-bottom: 1px solid #d0d7de; padding: 5px 10px; text-align: left; }
.tl-cmp-note { color: #57606a; margin-top: 6px; }
"""

TOKEN_CLICK_JS = """
element.addEventListener('click', (e) => {
  const c = e.target.closest('[data-cycle]');
  if (c) trigger('click', {cycle: parseInt(c.dataset.cycle)});
});
"""

HEADER = ("# EAGLE-2 Tree Lab\nSpeculative decoding with a dynamic draft tree, token by token. "
          "Model, head, tree policy, sampling and traces: the settings sidebar (the › / ‹ button at the top left).")
TREE_HOWTO = ("**Read it left to right:** the drafter's guesses for the next tokens; the target checked them all "
              "in one forward pass: **✓** accepted, **✗** rejected, **★** its own bonus token. Darker = higher "
              "draft value. Hover a node for its numbers.")
FIRST_STATUS = "Type a prompt and press Run, or open an example trace."
POLICY_INFO = ("eagle2-auto sizes the tree for this machine each cycle (+lookup: also copies from the context, "
               "marked ↪); eagle2 keeps total_tokens")
COMPARE_INTRO = ("Run two policies on the same prompt (the one above), with the same model, "
                 "head and sampling settings.")

INTRO = """
**How to read it.** Each cycle, a small *drafter* proposes a tree of likely next tokens (EAGLE-2 grows it by
*value* = product of draft confidences, then keeps the most valuable nodes). The big *target* model checks the
whole tree in **one** forward pass, keeps the longest path it agrees with (✓) and adds one token of its own
(★ bonus). More accepted tokens per target forward (τ) = faster, with exactly the target's output.
"""

COLOR_CHOICES = [("draft value (path)", "value"), ("confidence (per step)", "confidence")]
# On narrow screens the settings sidebar starts closed (the answer and the tree need the width);
# the resize makes an open sidebar push the page instead of covering it.
ON_LOAD_JS = """() => { setTimeout(() => {
  const b = document.querySelector('#settings .toggle-button');
  if (window.innerWidth < 1440 && b && document.querySelector('#settings.open')) b.click();
  window.dispatchEvent(new Event('resize'));
  // the sidebar pushes the page with a CSS transition: let the plots re-fit afterwards
  if (b) b.addEventListener('click', () => setTimeout(() => window.dispatchEvent(new Event('resize')), 400));
}, 300); }"""
EXAMPLE_PROMPT_HINT = "Example prompts…"
CALIBRATION_NOTE = """
*Draft value* is the product of confidences along the path: EAGLE-2's estimate that the whole path is
accepted. So against value, every verified draft node counts, and "accepted" means it ended on the accepted path.
*Confidence* is the drafter's probability of this one token given its parent: against confidence, only **tested**
nodes count (their parent was accepted, so the target compared them with its own choice, ✓ or ✗). A well-calibrated drafter puts the
points on the diagonal; with greedy decoding the target accepts exactly its top token, so the curve can bend into an S.
"""
