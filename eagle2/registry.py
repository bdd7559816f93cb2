"""The policy registry: every policy the CLI, the bench and the app can build, described once.

Each entry (`PolicyInfo`) gives a policy's name, a one-line label for people, the tree sizes
it takes (of top_k / depth / total_tokens) with their defaults, whether it needs a drafter and
whether it takes the auto tree size and prompt lookup. `build_policy` is the one way the front
ends turn a spec into a Policy (`resolve_policy` checks a spec without building it, e.g. before
a model is loaded). `make_policy` is the library's short-hand for it.

Specs (the bench's method strings, also `generate --policy`):

    NAME[@KEY=VALUE[@KEY=VALUE ...]]     eagle2   eagle2@total=12   eagle2@total=auto@lookup=10

After the name, options are separated by '@' or ',': `eagle2@total=auto,lookup=10` is
`eagle2@total=auto@lookup=10`. In a comma-separated list of specs (`split_specs`, the bench's
--methods), an item with '=' and no '@' continues the spec before it. Keys (the long names in
brackets are accepted too, in strings and as keywords):

    topk     (top_k)             children per expanded node                 eagle2
    depth    (depth)             depth of the deepest draft token           eagle2, chain
                                 (with total=auto: a ceiling)
    total    (total_tokens)      draft tokens kept by the rerank, or auto   eagle2
                                 (sized per cycle for this machine, eagle2.autotree)
    lookup   (lookup)            merge prompt-lookup chains of up to N      eagle2 with total=auto
                                 copied tokens into the tree (0 = off)
    anchors  (lookup_anchors)    with lookup: chains also continue the A    eagle2 with total=auto
                                 most valuable drafted nodes (default 0)
    dyn      (dynamic_depth)     0 = always expand to depth                 eagle2 with total=auto
    cal      (calibrate_values)  0 = trust the draft values                 eagle2 with total=auto
    vocab    (draft_vocab)       a reduced draft vocabulary of N tokens     any drafting policy
                                 (the drafter's, not a policy setting; 0 = full; auto,
                                 the default = where it pays: eagle2.vocab)
    sampled  (sampled_drafts)    at T > 0: 1 = children drawn from the      the built-in drafting
                                 drafter (default; verify.SampledDrafts),   policies
                                 0 = its top-k (EAGLE-2's rule); with
                                 lookup, copies join the drawn children
    dtemp    (draft_temperature_pct)  sampled drafts come from the drafter    the built-in drafting
                                 at N % of the sampling temperature          policies
                                 (default 90: a head's q is a little
                                 flatter than the target's p)

Options written in a spec, or passed to `build_policy` as keywords, must apply to the policy
(`chain@topk=3` is an error). Values passed in `defaults=` (a tool's shared flags, the app's
sliders) fill only what the policy takes and the spec leaves unset; the rest take the entry's
defaults. Presets pin options: `eagle2-auto` is eagle2 with total=auto, `eagle2-auto+lookup`
adds lookup=10.

Plug-ins: `register(PolicyInfo.from_class(MyPolicy))` makes a Policy subclass buildable by name.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from .autotree import AUTO_DEFAULT_DEPTH, AutoEagle2, LatencyModel, load_or_calibrate
from .policies import Chain, Eagle1, Eagle2, Policy, Vanilla

SIZES = ("top_k", "depth", "total_tokens")
AUTO_BASE = "eagle2"  # the policy whose tree size can be "auto"
DEFAULT_POLICY = "eagle2-auto"  # what the CLI, the bench and the app run unless told otherwise
LOOKUP_TOKENS = 10  # the longest copied chain of the eagle2-auto+lookup preset (the benchmarked setting)


# ---- options -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One key of the spec syntax."""

    key: str  # in specs: "total"
    name: str  # as a keyword and in PolicyChoice.values: "total_tokens"
    low: int
    high: int | None = None
    takes_auto: bool = False  # "auto" is a value too
    kind: str = "size"  # "size", "auto" (needs total=auto) or "drafter" (not a policy setting)
    help: str = ""

    def bounds(self) -> str:
        if (self.low, self.high) == (0, 1):
            return "0 or 1"
        return f">= {self.low}" if self.high is None else f"in {self.low}..{self.high}"


OPTIONS = (
    Option("topk", "top_k", 1, help="children per expanded node"),
    Option("depth", "depth", 1, help="depth of the deepest draft token (with total=auto: a ceiling)"),
    Option("total", "total_tokens", 1, takes_auto=True, help="draft tokens kept by the rerank, or auto"),
    Option("lookup", "lookup", 0, kind="auto", help="merge prompt-lookup chains of up to N copied tokens (0 = off)"),
    Option("anchors", "lookup_anchors", 0, kind="auto",
           help="with lookup: chains also continue the A most valuable drafted nodes"),
    Option("dyn", "dynamic_depth", 0, 1, kind="auto", help="0 = no dynamic depth (always expand to depth)"),
    Option("cal", "calibrate_values", 0, 1, kind="auto", help="0 = trust the draft values (no acceptance calibration)"),
    Option("vocab", "draft_vocab", 0, takes_auto=True, kind="drafter",
           help="a reduced draft vocabulary of N tokens (0 = full; auto = where it pays, eagle2.vocab)"),
    Option("sampled", "sampled_drafts", 0, 1, kind="drafting",
           help="at T > 0: 1 = draw drafts from the drafter (the default), 0 = its top-k (EAGLE-2's rule)"),
    Option("dtemp", "draft_temperature_pct", 1, 1000, kind="drafting",
           help="sampled drafts: draw from the drafter at N percent of the sampling temperature (default 90)"),
)
_OPTION = {**{o.key: o for o in OPTIONS}, **{o.name: o for o in OPTIONS}}


def _option(spelling: str) -> Option:
    try:
        return _OPTION[spelling]
    except KeyError:
        raise TypeError(f"unknown policy option {spelling!r}: use one of "
                        f"{', '.join(o.name for o in OPTIONS)}") from None


def _check_range(opt: Option, v: int, label: str) -> int:
    if v < opt.low or (opt.high is not None and v > opt.high):
        raise ValueError(f"{label} must be {opt.bounds()}, got {v}")
    return v


def _parse_value(opt: Option, text: str) -> int | str:
    """A value written in a spec."""
    if opt.takes_auto and text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"method option {opt.key} must be an integer{' or auto' if opt.takes_auto else ''}, "
                         f"got {text!r}") from None
    return _check_range(opt, v, f"method option {opt.key}")


def _check_keyword(opt: Option, v: Any, label: str) -> int | str:
    """A value passed as a keyword (or in defaults)."""
    if opt.takes_auto and v == "auto":
        return "auto"
    if isinstance(v, bool) and opt.high == 1:
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{label} must be an int{' or auto' if opt.takes_auto else ''}, got {type(v).__name__} {v!r}")
    return _check_range(opt, v, label)


# ---- specs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """A parsed spec: the policy's name and the options written after it (by key)."""

    name: str
    options: Mapping[str, int | str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text or format_spec(self.name, self.options)


def spec_name(text: str) -> str:
    """The name part of a spec (before the first '@')."""
    return text.split("@", 1)[0].strip()


def format_spec(name: str, options: Mapping[str, Any]) -> str:
    """The canonical spec string: the name, then key=value in the order of OPTIONS."""
    opts = {_option(k).key: v for k, v in options.items()}
    return name + "".join(f"@{o.key}={opts[o.key]}" for o in OPTIONS if o.key in opts)


def parse_spec(text: str) -> PolicySpec:
    """Parse `NAME[@KEY=VALUE...]` (options separated by '@' or ','); a one-line ValueError
    for an unknown name or key, a bad value or a key given twice."""
    if not isinstance(text, str):
        raise TypeError(f"a policy spec is a str, got {type(text).__name__}")
    item = text.strip()
    name, sep, rest = item.partition("@")
    name = name.strip()
    if not name:
        raise ValueError(f"no policy name in {text!r}")
    policy_info(name)
    options: dict[str, int | str] = {}
    for part in re.split(r"[@,]", rest) if sep else []:
        key, eq, value = (s.strip() for s in part.partition("="))
        opt = _OPTION.get(key)
        if not eq or opt is None:
            raise ValueError(f"bad method option {part.strip()!r} in {item!r}: use key=value with key in "
                             f"{', '.join(o.key for o in OPTIONS)}")
        if opt.key in options:
            raise ValueError(f"method option {opt.key} is given twice in {item!r}")
        options[opt.key] = _parse_value(opt, value)
    return PolicySpec(name, options, item)


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs; an item with '=' and no '@' continues the spec before it
    (so `eagle2@total=auto,lookup=10,chain` is two specs)."""
    out: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if "=" in item and "@" not in item and out and "@" in out[-1]:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


# ---- the entries ---------------------------------------------------------------------------------
Factory = Callable[[dict, Callable[[], LatencyModel]], Policy]


@dataclass(frozen=True)
class PolicyInfo:
    """What the front ends need to know about one policy, and how to build it."""

    name: str
    label: str  # one line, for people
    make: Factory  # (resolved values by option name, a latency curve on demand) -> Policy
    sizes: tuple[str, ...] = ()  # which of top_k / depth / total_tokens a user sets
    defaults: Mapping[str, int] = field(default_factory=dict)  # their defaults
    needs_drafter: bool = True
    auto: bool = False  # takes total_tokens="auto" (the tree sized per cycle for this machine)
    lookup: bool = False  # takes lookup (with total_tokens="auto")
    fixed: Mapping[str, Any] = field(default_factory=dict)  # options a preset pins (by name)
    auto_defaults: Mapping[str, int] = field(default_factory=dict)  # size defaults when total is auto
    cls: type | None = None  # the Policy class of a plug-in

    @classmethod
    def from_class(cls, policy_cls: type, name: str | None = None, label: str | None = None) -> "PolicyInfo":
        """An entry for a Policy subclass: its sizes are the top_k / depth / total_tokens its
        __init__ takes, their defaults its own; the label is the first line of its docstring."""
        if not (isinstance(policy_cls, type) and issubclass(policy_cls, Policy)):
            raise TypeError(f"{policy_cls!r} is not an eagle2 Policy class")
        params = inspect.signature(policy_cls.__init__).parameters
        sizes = tuple(k for k in SIZES if k in params)
        defaults = {k: params[k].default for k in sizes if params[k].default is not inspect.Parameter.empty}
        doc = (inspect.getdoc(policy_cls) or "").strip()
        name = name or getattr(policy_cls, "name", None) or policy_cls.__name__

        def make(values: dict, _latency) -> Policy:
            return policy_cls(**{k: values[k] for k in sizes if k in values})

        return cls(name, label or (doc.splitlines()[0] if doc else f"{name} (a user policy)"), make, sizes,
                   MappingProxyType(defaults), needs_drafter=bool(policy_cls.needs_drafter), cls=policy_cls)

    def takes(self, opt: Option, auto: bool) -> bool:
        """Does this policy take `opt` (when its tree size is auto or not)?"""
        if opt.kind == "drafter":
            return self.needs_drafter
        if opt.kind == "drafting":  # a setting of the built-in policies' drafting
            return self.needs_drafter and self.cls is None
        if opt.kind == "auto":
            return self.auto and auto and (opt.name != "lookup" or self.lookup)
        return opt.name in self.sizes or opt.name in self.fixed

    def defaults_for(self, auto: bool) -> dict:
        return {**self.defaults, **(self.auto_defaults if auto else {})}

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "sizes": list(self.sizes), "defaults": dict(self.defaults),
                "needs_drafter": self.needs_drafter, "auto": self.auto, "lookup": self.lookup,
                "fixed": dict(self.fixed)}


def _signature_defaults(cls: type, names) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: params[k].default for k in names}


def _make_eagle2(v: dict, latency) -> Policy:
    if v["total_tokens"] != "auto":
        return Eagle2(top_k=v["top_k"], depth=v["depth"], total_tokens=v["total_tokens"])
    kw = {k: v[k] for k in ("lookup", "lookup_anchors") if k in v}
    kw.update({k: bool(v[k]) for k in ("dynamic_depth", "calibrate_values") if k in v})
    return AutoEagle2(latency(), top_k=v["top_k"], depth=v["depth"], **kw)


def _builtins() -> list[PolicyInfo]:
    tree = MappingProxyType(_signature_defaults(Eagle2, SIZES))
    auto = MappingProxyType({"top_k": _signature_defaults(AutoEagle2, ["top_k"])["top_k"],
                             "depth": AUTO_DEFAULT_DEPTH})
    eagle2 = dict(make=_make_eagle2, sizes=SIZES, defaults=tree, auto=True, lookup=True, auto_defaults=auto)
    preset = {**eagle2, "sizes": ("top_k", "depth"), "defaults": auto}
    return [
        PolicyInfo("eagle2-auto", "EAGLE-2 with the tree size chosen each cycle for this machine", **preset,
                   fixed=MappingProxyType({"total_tokens": "auto"})),
        PolicyInfo("eagle2-auto+lookup", f"eagle2-auto plus a prompt-lookup chain of up to {LOOKUP_TOKENS} tokens "
                   "copied from the context", **preset,
                   fixed=MappingProxyType({"total_tokens": "auto", "lookup": LOOKUP_TOKENS})),
        PolicyInfo("eagle2", "EAGLE-2: expand by value for depth steps, keep the total_tokens best (or auto)",
                   **eagle2),
        PolicyInfo("eagle1", "EAGLE-1: the same 25-node static tree every cycle", lambda v, _: Eagle1()),
        PolicyInfo("chain", "a chain of depth top-1 drafts (classic speculative decoding)",
                   lambda v, _: Chain(depth=v["depth"]), ("depth",),
                   MappingProxyType(_signature_defaults(Chain, ["depth"]))),
        PolicyInfo("vanilla", "no drafting: one token per target forward", lambda v, _: Vanilla(),
                   needs_drafter=False),
    ]


REGISTRY: dict[str, PolicyInfo] = {info.name: info for info in _builtins()}


def names() -> list[str]:
    return list(REGISTRY)


def policy_info(name: str) -> PolicyInfo:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}: choose from {', '.join(REGISTRY)}") from None


def register(info: PolicyInfo) -> PolicyInfo:
    """Add an entry (a plug-in); registering the same class twice is a no-op."""
    if not info.name or re.search(r"[@,=\s]", info.name):
        raise ValueError(f"bad policy name {info.name!r}: no '@', ',', '=' or spaces")
    old = REGISTRY.get(info.name)
    if old is not None and not (old.cls is not None and old.cls is info.cls):
        raise ValueError(f"a policy named {info.name!r} is registered already")
    REGISTRY.setdefault(info.name, info)
    return REGISTRY[info.name]


def policy_table() -> str:
    """One line per registered policy: its name and label (for --help)."""
    width = max(map(len, REGISTRY))
    return "\n".join(f"  {n.ljust(width)}  {i.label}" for n, i in REGISTRY.items())


# ---- resolving and building ------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyChoice:
    """A checked spec: the entry and every value it will be built with (by option name)."""

    info: PolicyInfo
    values: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def auto(self) -> bool:
        return self.values.get("total_tokens") == "auto"

    @property
    def needs_target(self) -> bool:  # the auto tree size calibrates against the target
        return self.auto

    @property
    def needs_drafter(self) -> bool:
        return self.info.needs_drafter

    @property
    def draft_vocab(self) -> int | str:
        return self.values.get("draft_vocab", "auto")

    def spec(self) -> str:
        """A spec string that resolves back to this choice."""
        return format_spec(self.name, {k: v for k, v in self.values.items() if k not in self.info.fixed})

    def describe(self) -> dict:
        """What the built policy's describe() says (policy name and sizes), without a target."""
        if not self.auto:
            return self.build().describe()
        v = self.values
        return {"policy": AutoEagle2.name, "top_k": v["top_k"], "depth": v["depth"], "total_tokens": "auto",
                **({"lookup": v["lookup"]} if v.get("lookup") else {})}

    def build(self, target=None, latency: LatencyModel | None = None) -> Policy:
        """A fresh policy (policies keep state). The auto tree size needs `latency` or the
        `target` (an eagle2.Target or its model) to calibrate against (cached per machine)."""
        def curve() -> LatencyModel:
            if latency is not None:
                return latency
            if target is None:
                raise ValueError(f"{self.spec()} sizes its tree for this machine: it needs the target model "
                                 "to calibrate against")
            return load_or_calibrate(target if isinstance(target, torch.nn.Module) else target.model)

        policy = self.info.make(dict(self.values), curve)
        if "sampled_drafts" in self.values:
            policy.sampled_drafts = bool(self.values["sampled_drafts"])
        if "draft_temperature_pct" in self.values:
            policy.draft_temperature = self.values["draft_temperature_pct"] / 100
        return policy


def _explicit(parsed: PolicySpec, values: dict, flags: Mapping[str, str]) -> tuple[dict, dict]:
    """Options written in the spec or passed as keywords (by name), and how to spell each in a message."""
    explicit, spelled = {}, {}
    for key, v in parsed.options.items():
        opt = _option(key)
        explicit[opt.name], spelled[opt.name] = v, f"{opt.key}={v}"
    for name, v in values.items():
        if v is None:
            continue
        opt = _option(name)
        if opt.name in explicit:
            raise ValueError(f"{opt.name} is given twice: {spelled[opt.name]} in {str(parsed)!r} and as a keyword")
        explicit[opt.name] = _check_keyword(opt, v, flags.get(opt.name, opt.name))
        spelled[opt.name] = flags.get(opt.name) or f"{opt.name}={v!r}"
    return explicit, spelled


def _not_taken(info: PolicyInfo, opt: Option, spelled: str, flags: Mapping[str, str]) -> ValueError:
    if opt.kind == "auto":
        auto = f"{flags['total_tokens']} auto" if "total_tokens" in flags else "total=auto"
        return ValueError(f"{spelled} needs the {AUTO_BASE} policy with {auto} (the tree size that weighs "
                          "copied tokens against drafted ones)" if opt.name == "lookup" else
                          f"{spelled} needs the {AUTO_BASE} policy with {auto}")
    if opt.kind in ("drafter", "drafting") and not info.needs_drafter:
        return ValueError(f"{info.name} takes no {spelled}: it drafts nothing")
    if opt.kind == "drafting":
        return ValueError(f"{info.name} takes no {spelled}: a plug-in policy drafts as it was written")
    if opt.name == "total_tokens" and spelled.endswith("auto") and "total_tokens" in info.sizes:
        return ValueError(f"{info.name} takes no {spelled}: only {AUTO_BASE} sizes its tree per cycle")
    takes = [o.key for o in OPTIONS if o.kind == "size" and info.takes(o, False)]
    return ValueError(f"{info.name} takes no {spelled} (it takes {', '.join(takes) or 'no tree sizes'})")


def _settle_total(info: PolicyInfo, chosen: dict, spelled: dict, defaults: Mapping, flags) -> None:
    """The tree size first: whether it is auto decides which other options apply."""
    total = chosen.get("total_tokens")
    if total is None and defaults.get("total_tokens") is not None and "total_tokens" in info.sizes:
        d = _check_keyword(_option("total_tokens"), defaults["total_tokens"], flags.get("total_tokens", "total_tokens"))
        if d != "auto" or info.auto:
            chosen["total_tokens"] = d
    elif total == "auto" and not info.auto:
        raise _not_taken(info, _option("total_tokens"), spelled["total_tokens"], flags)


def resolve_policy(spec: str | PolicySpec = AUTO_BASE, *, defaults: Mapping[str, Any] | None = None,
                   flags: Mapping[str, str] | None = None, **values) -> PolicyChoice:
    """Check a spec and settle every value, without building anything that needs a model.

    spec      a name or spec string (module doc) or a parsed PolicySpec
    values    options as keywords (top_k=3, total_tokens="auto", lookup=10 ...): like options
              written in the spec, they must apply; None = unset
    defaults  fill-ins (a tool's flags, the app's sliders): used where the policy takes them
              and nothing above set them; None = unset
    flags     how the caller's users spell keyword options, for messages ({"lookup": "--lookup"})

    Policies that need no target are built once here, so a bad size fails now with check_size's
    message. Bad input: a one-line ValueError (or TypeError for a wrong type or unknown keyword).
    """
    flags, defaults = flags or {}, defaults or {}
    parsed = spec if isinstance(spec, PolicySpec) else parse_spec(spec)
    info = policy_info(parsed.name)
    explicit, spelled = _explicit(parsed, values, flags)
    for name, v in info.fixed.items():
        if name in explicit and explicit[name] != v:
            raise ValueError(f"{info.name} fixes {_option(name).key}={v}; {spelled[name]} contradicts it")
    chosen = {**explicit, **info.fixed}
    _settle_total(info, chosen, spelled, defaults, flags)
    auto = chosen.get("total_tokens") == "auto"
    for name in explicit:
        if not info.takes(_option(name), auto):
            raise _not_taken(info, _option(name), spelled[name], flags)
    for name, v in defaults.items():
        opt = _option(name)
        if v is not None and opt.name not in chosen and info.takes(opt, auto):
            chosen[opt.name] = _check_keyword(opt, v, flags.get(opt.name, opt.name))
    for name, v in info.defaults_for(auto).items():
        chosen.setdefault(name, v)
    choice = PolicyChoice(info, MappingProxyType(chosen))
    if not choice.needs_target:
        choice.build()  # check the sizes now (Eagle2 / Chain run check_size)
    return choice


def build_policy(spec: str | PolicySpec = AUTO_BASE, *, target=None, latency: LatencyModel | None = None,
                 defaults: Mapping[str, Any] | None = None, flags: Mapping[str, str] | None = None,
                 **values) -> Policy:
    """Build a policy from a spec (see resolve_policy for the arguments):

        build_policy("eagle2@total=auto@lookup=10", target=target)
        build_policy("eagle2", top_k=3, depth=4, total_tokens=8)
        build_policy("chain@depth=3", defaults={"top_k": 4, "total_tokens": "auto"})
    """
    return resolve_policy(spec, defaults=defaults, flags=flags, **values).build(target=target, latency=latency)


def make_policy(name: str, top_k: int | None = None, depth: int | None = None,
                total_tokens: int | str | None = None, target=None, lookup: int = 0) -> Policy:
    """The library's short-hand: a named policy; sizes it does not take are ignored, unset ones
    take its defaults. total_tokens="auto" (eagle2) sizes each cycle's tree for this machine
    (eagle2.autotree; needs the `target` to calibrate against); lookup=N then merges prompt-
    lookup chains of up to N copied tokens (eagle2.lookup)."""
    sizes = {k: v for k, v in (("top_k", top_k), ("depth", depth), ("total_tokens", total_tokens)) if v is not None}
    return build_policy(name, target=target, defaults=sizes, **({"lookup": lookup} if lookup else {}))
