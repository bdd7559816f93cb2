"""The policy registry (eagle2/registry.py): spec syntax, defaults, messages, every entry, and
the CLI, the bench and the app going through the one resolve_policy. No model: milliseconds."""

from __future__ import annotations

import inspect

import pytest
import torch

from eagle2 import bench, cli, registry
from eagle2.autotree import AUTO_DEFAULT_DEPTH, AutoEagle2, LatencyModel
from eagle2.policies import Chain, Eagle1, Eagle2, Policy, Vanilla
from eagle2.registry import make_policy
from eagle2.registry import PolicyInfo, build_policy, parse_spec, resolve_policy, split_specs
from viz.lab import config
from viz.lab.state import validate

FLAT = LatencyModel([1, 64], [0.01, 0.02])  # a latency curve, so auto policies build without a model


@pytest.fixture
def isolated_registry(monkeypatch):
    """Plug-ins registered in a test vanish after it."""
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    return registry.REGISTRY


# ---- parsing -------------------------------------------------------------------------------------------
def test_parse_spec_keys_separators_and_long_names():
    s = parse_spec("eagle2@total=auto@lookup=10")
    assert (s.name, dict(s.options)) == ("eagle2", {"total": "auto", "lookup": 10})
    assert str(s) == "eagle2@total=auto@lookup=10"
    assert parse_spec("eagle2@total=auto,lookup=10").options == s.options  # ',' separates options too
    assert parse_spec(" eagle2 @ top_k = 3 , total_tokens=8 ").options == {"topk": 3, "total": 8}  # long names
    assert parse_spec("chain").options == {} and parse_spec("eagle2@dyn=0@cal=0").options == {"dyn": 0, "cal": 0}
    assert registry.format_spec("eagle2", {"lookup": 10, "top_k": 3}) == "eagle2@topk=3@lookup=10"  # OPTIONS order


def test_split_specs_keeps_options_with_their_method():
    assert split_specs("hf, eagle2@total=auto,lookup=10,chain,eagle2@vocab=8") == [
        "hf", "eagle2@total=auto,lookup=10", "chain", "eagle2@vocab=8"]
    assert split_specs(" , ") == []


# ---- defaults ----------------------------------------------------------------------------------------------
def test_defaults_come_from_the_policies():
    sig = inspect.signature(Eagle2.__init__).parameters
    tree = {k: sig[k].default for k in ("top_k", "depth", "total_tokens")}
    assert dict(resolve_policy("eagle2@total=12").values) == {**tree, "total_tokens": 12}
    assert dict(resolve_policy("eagle2").values) == tree  # the library default: a fixed tree
    auto = resolve_policy("eagle2@total=auto")
    assert auto.values["depth"] == AUTO_DEFAULT_DEPTH and auto.auto and auto.needs_target
    assert auto.values["top_k"] == inspect.signature(AutoEagle2.__init__).parameters["top_k"].default
    assert resolve_policy("chain").values == {"depth": inspect.signature(Chain.__init__).parameters["depth"].default}
    assert dict(resolve_policy("eagle2-auto+lookup").values) == {
        "total_tokens": "auto", "lookup": registry.LOOKUP_TOKENS, "top_k": auto.values["top_k"],
        "depth": AUTO_DEFAULT_DEPTH}
    assert registry.DEFAULT_POLICY in registry.names()


def test_spec_options_win_and_defaults_fill_only_what_a_policy_takes():
    flags = {"top_k": 6, "depth": 3, "total_tokens": "auto", "lookup": 10, "draft_vocab": 0}
    c = resolve_policy("eagle2@topk=2", defaults=flags)
    assert dict(c.values) == {"top_k": 2, "depth": 3, "total_tokens": "auto", "lookup": 10, "draft_vocab": 0}
    assert dict(resolve_policy("chain", defaults=flags).values) == {"depth": 3, "draft_vocab": 0}
    assert dict(resolve_policy("vanilla", defaults=flags).values) == {}
    fixed = resolve_policy("eagle2@total=12", defaults=flags)  # lookup applies to the auto size only
    assert "lookup" not in fixed.values and fixed.values["total_tokens"] == 12
    assert resolve_policy("eagle2-auto", defaults={"total_tokens": 5}).values["total_tokens"] == "auto"  # pinned


# ---- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, kwargs, error, fragment", [
    ("beam", {}, ValueError, "unknown policy 'beam': choose from eagle2-auto"),
    ("@total=3", {}, ValueError, "no policy name"),
    ("eagle2@foo=1", {}, ValueError, "bad method option 'foo=1'"),
    ("eagle2@total", {}, ValueError, "use key=value"),
    ("eagle2@total=x", {}, ValueError, "method option total must be an integer or auto, got 'x'"),
    ("eagle2@topk=0", {}, ValueError, "method option topk must be >= 1, got 0"),
    ("eagle2@dyn=2", {}, ValueError, "method option dyn must be 0 or 1"),
    ("eagle2@depth=3@depth=4", {}, ValueError, "depth is given twice"),
    ("eagle2@depth=3", {"depth": 4}, ValueError, "depth is given twice"),
    ("chain@topk=3", {}, ValueError, "chain takes no topk=3 (it takes depth)"),
    ("chain@total=auto", {}, ValueError, "chain takes no total=auto"),
    ("eagle1", {"depth": 3}, ValueError, "eagle1 takes no depth=3"),
    ("vanilla@vocab=8", {}, ValueError, "vanilla takes no vocab=8: it drafts nothing"),
    ("eagle2@total=12@lookup=3", {}, ValueError, "lookup=3 needs the eagle2 policy with total=auto"),
    ("eagle2@dyn=0", {}, ValueError, "dyn=0 needs the eagle2 policy with total=auto"),
    ("eagle2-auto@total=5", {}, ValueError, "eagle2-auto fixes total=auto"),
    ("eagle2@topk=2@depth=2@total=50", {}, ValueError, "more than a top_k=2, depth=2 tree can hold (6)"),
    ("eagle2", {"top_k": 3.0}, TypeError, "top_k must be an int, got float"),
    ("eagle2", {"depth": True}, TypeError, "depth must be an int"),
    ("eagle2", {"beam_width": 3}, TypeError, "unknown policy option 'beam_width'"),
    (42, {}, TypeError, "a policy spec is a str"),
])
def test_bad_input_is_one_line(spec, kwargs, error, fragment):
    with pytest.raises(error) as e:
        resolve_policy(spec, **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_messages_use_the_callers_flags():
    with pytest.raises(ValueError, match="^--lookup needs the eagle2 policy with --total-tokens auto"):
        resolve_policy("chain", lookup=5, flags=cli.CLI_FLAGS)


def test_auto_needs_the_target_or_a_latency_curve(monkeypatch, tiny_target):
    choice = resolve_policy("eagle2-auto@topk=2@depth=3")
    with pytest.raises(ValueError, match="needs the target model"):
        choice.build()
    seen = []
    monkeypatch.setattr(registry, "load_or_calibrate", lambda model: seen.append(model) or FLAT)
    policy = choice.build(target=tiny_target)  # an eagle2.Target: calibrated on its model
    assert isinstance(policy, AutoEagle2) and (policy.top_k, policy.depth) == (2, 3)
    assert seen == [tiny_target.model] and isinstance(seen[0], torch.nn.Module)
    assert choice.build(latency=FLAT).describe()["total_tokens"] == "auto" and seen == [tiny_target.model]


# ---- every entry -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", registry.names())
def test_every_registered_policy_builds_and_describes_itself(name):
    info = registry.policy_info(name)
    d = info.describe()
    assert d["name"] == name and d["label"] and "\n" not in d["label"]
    assert set(d["sizes"]) <= {"top_k", "depth", "total_tokens"} and set(d["defaults"]) == set(d["sizes"])
    choice = resolve_policy(name)
    policy = choice.build(latency=FLAT)
    assert isinstance(policy, Policy) and policy.needs_drafter == info.needs_drafter == choice.needs_drafter
    assert choice.describe() == {k: v for k, v in policy.describe().items() if k in choice.describe()}
    assert policy.describe()["policy"] == choice.describe()["policy"]
    again = resolve_policy(choice.spec())  # the canonical spec resolves back to the same values
    assert dict(again.values) == dict(choice.values)
    assert name in registry.policy_table()
    assert choice.build(latency=FLAT) is not policy  # a fresh policy per build (policies keep state)


def test_make_policy_and_the_registry_agree():
    for name, kw in (("eagle2", dict(top_k=3, depth=3, total_tokens=8)), ("chain", dict(depth=4)),
                     ("eagle1", {}), ("vanilla", {})):
        assert build_policy(name, **kw).describe() == make_policy(name, **kw).describe()
    assert type(build_policy("eagle1")) is Eagle1 and type(build_policy("vanilla")) is Vanilla


# ---- plug-ins ------------------------------------------------------------------------------------------------
class Twig(Chain):
    """A short chain, for the plug-in tests."""

    name = "twig"

    def __init__(self, depth: int = 2):
        super().__init__(depth=depth)


def test_register_a_plug_in(isolated_registry):
    info = registry.register(PolicyInfo.from_class(Twig))
    assert (info.name, info.sizes, dict(info.defaults), info.label) == (
        "twig", ("depth",), {"depth": 2}, "A short chain, for the plug-in tests.")
    assert "twig" in registry.names() and registry.register(PolicyInfo.from_class(Twig)) is info  # no-op
    assert build_policy("twig@depth=3").depth == 3 and build_policy("twig").depth == 2
    with pytest.raises(ValueError, match="registered already"):
        registry.register(PolicyInfo.from_class(Twig, name="chain"))
    with pytest.raises(ValueError, match="bad policy name"):
        registry.register(PolicyInfo.from_class(Twig, name="a@b"))
    with pytest.raises(TypeError, match="not an eagle2 Policy"):
        PolicyInfo.from_class(dict)


def test_the_app_installs_user_policies(isolated_registry, monkeypatch, tmp_path):
    plugin = tmp_path / "plug.py"
    plugin.write_text("from eagle2.policies import Chain, Vanilla\n"
                      "class Sprig(Chain):\n    name = 'sprig'\n"
                      "class Plain(Vanilla):\n    pass\n")  # inherits the name 'vanilla': taken
    monkeypatch.setenv("EAGLE2_APP_POLICIES", f"{plugin}:Sprig,{plugin}:Plain")
    assert config.install_user_policies() == ["sprig"]
    assert config.policy_choices()[-1] == "sprig" and registry.policy_info("vanilla").cls is None


# ---- one function for the CLI, the bench and the app ----------------------------------------------------------
def _front_ends(cli_argv, bench_method, bench_argv, app_policy, app_sizes):
    args = cli.generate_parser().parse_args(["--prompt", "hi", *cli_argv])
    c = cli.policy_choice(args)
    bargs = bench.build_parser().parse_args(["--questions", "q.jsonl", *bench_argv])
    b = bench.method_policy(bench.parse_methods(bench_method)[0], bargs)
    a = validate("hi", "default", "self", app_policy, *app_sizes, 0.0, 1.0, 8, 0).choice
    return c, b, a


@pytest.mark.parametrize("cli_argv, bench_method, bench_argv, app_policy, app_sizes", [
    (["--top-k", "3", "--depth", "3", "--total-tokens", "8"], "eagle2@topk=3@depth=3@total=8", [], "eagle2", (3, 3, 8)),
    (["--policy", "chain", "--depth", "4"], "chain", ["--depth", "4"], "chain", (3, 4, 8)),
    (["--policy", "eagle1"], "eagle1", [], "eagle1", (4, 5, 12)),
    (["--policy", "vanilla"], "vanilla", [], "vanilla", (4, 5, 12)),
    (["--top-k", "3", "--depth", "6"], "eagle2", ["--top-k", "3", "--depth", "6"], "eagle2-auto", (3, 6, 12)),
    (["--lookup", "10"], "eagle2@lookup=10", [], "eagle2-auto+lookup", (4, 8, 12)),
    (["--policy", "eagle2@total=auto,lookup=10"], "eagle2-auto+lookup", ["--lookup", "3"], "eagle2-auto+lookup",
     (4, 8, 12)),
])
def test_cli_bench_and_app_agree(cli_argv, bench_method, bench_argv, app_policy, app_sizes):
    choices = _front_ends(cli_argv, bench_method, bench_argv, app_policy, app_sizes)
    described = [c.describe() for c in choices]
    assert described[0] == described[1] == described[2]
    built = [c.build(latency=FLAT).describe() for c in choices]
    assert built[0] == built[1] == built[2]


def test_cli_bench_and_app_call_the_same_function(monkeypatch):
    calls = []
    real = registry.resolve_policy

    def spy(spec, **kw):
        calls.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(registry, "resolve_policy", spy)
    _front_ends(["--policy", "chain"], "chain@depth=2", [], "chain", (4, 2, 12))
    assert calls == ["chain", "chain@depth=2", "chain"]


def test_front_ends_report_registry_errors_their_way(capsys):
    assert cli.main(["generate", "--prompt", "hi", "--policy", "chain@topk=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: chain takes no topk=3 (it takes depth)"
    assert cli.main(["generate", "--prompt", "hi", "--policy", "beam@depth=3"]) == 2
    assert "invalid choice: 'beam'" in capsys.readouterr().err
    assert cli.main(["generate", "--prompt", "hi", "--policy", "eagle2@vocab=many"]) == 2
    assert "vocab must be an integer or auto" in capsys.readouterr().err
    bargs = bench.build_parser().parse_args(["--questions", "q.jsonl", "--total-tokens", "12"])
    with pytest.raises(bench.BenchError, match=r"^eagle2@lookup=10: lookup=10 needs the eagle2 policy"):
        bench.method_policy(bench.parse_methods("eagle2@lookup=10")[0], bargs)
    with pytest.raises(ValueError, match="^Bad tree size: total_tokens=7 is more than"):
        validate("hi", "default", "self", "eagle2", 2, 2, 7, 0.0, 1.0, 8, 0)
    specs = bench.parse_methods("hf,eagle2@total=auto,lookup=10,eagle2-auto+lookup")
    assert [s.name for s in specs] == ["hf", "eagle2@total=auto,lookup=10", "eagle2-auto+lookup"]
    assert specs[1].options == {"total": "auto", "lookup": 10} and specs[2].drafting and not specs[0].drafting
