"""The KV pruning policy: what to prune, how much, and how the pruned cache is stored."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass
from typing import Any

DIRECTIONS = ("token", "channel")
SCORERS = ("magnitude", "output_aware", "think")
# N:M groups (keep.NM_GROUPS, CALIBRATED_GROUPS)
NM_RULES = ("nm4", "nm8", "nm16", "nm4s", "nm8s", "nm8c", "nm16c")
KEEP_RULES = ("exact", "reference", "word", *NM_RULES)
MODES = ("mask", "compressed")
ALLOCATIONS = ("uniform", "error", "error_head")
EVICTIONS = ("none", "snapkv")
VALUE_DTYPES = ("native", "fp8")
# KVConfig fields left out of to_dict (hence job ids) at their default
ID_OPTIONAL: tuple[str, ...] = (
    "k_layer_sparsity",
    "v_layer_sparsity",
    "allocation",
    "evict",
    "token_budget",
    "evict_window",
    "evict_pool",
    "value_dtype",
    "k_keep_rule",
    "v_keep_rule",
)
CHANNEL_GROUP = 32  # tokens per per-channel pruning group (docs/method.md §1)
_RULE_TAGS = {"reference": "ref"}  # keep rules' short names in labels (the others appear as they are)


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the allowed values."""


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def _sparsity(key: str, value: Any) -> float:
    if isinstance(value, bool):  # float(True) is 1.0 and float(False) 0.0: a flag, not a fraction
        raise ConfigError(f"{key}={value!r} is a boolean, not a number; sparsity must be in [0, 1)")
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number; sparsity must be in [0, 1)") from None
    if not 0.0 <= s < 1.0:
        raise ConfigError(
            f"{key}={value!r} is outside [0, 1): sparsity is the fraction of entries set to zero"
        )
    return s


def _layer_list(key: str, value: Any) -> tuple[float, ...]:
    """A per-layer sparsity list as a tuple (hashable, serialisable), each entry checked like a sparsity."""
    if value is None:
        return ()
    # a mapping or set iterates its keys (or no order): {0: 0.9} read as the list [0]
    if isinstance(value, (str, bytes, Mapping, Set)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{key}={value!r} must be a list of sparsities, one per layer, each in [0, 1)")
    return tuple(_sparsity(f"{key}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class PruneRule:
    """How one of K or V is pruned."""

    sparsity: float = 0.0
    direction: str = "token"
    scorer: str = "magnitude"

    @property
    def active(self) -> bool:
        return self.sparsity > 0.0

    def label(self) -> str:
        if not self.active:
            return "dense"
        if self.scorer == "think":
            return f"think{self.sparsity:g}"
        return f"{self.direction}-{self.scorer}{self.sparsity:g}"


@dataclass(frozen=True)
class KVConfig:
    """A complete KV policy. Field names are the Hydra keys under `kv.`."""

    k_sparsity: float = 0.0
    v_sparsity: float = 0.0
    k_direction: str = "token"
    v_direction: str = "token"
    k_scorer: str = "magnitude"
    v_scorer: str = "magnitude"
    window: int = 32
    keep_rule: str = "exact"
    mode: str = "mask"
    k_layer_sparsity: tuple[float, ...] = ()  # one K sparsity per layer; k_sparsity becomes their mean
    v_layer_sparsity: tuple[float, ...] = ()
    allocation: str = "uniform"  # how the K/V budget is spread over layers or heads (mustafar.allocation)
    evict: str = "none"  # token eviction at the end of prefill, before pruning (mustafar/eviction.py)
    token_budget: int = 0  # prompt tokens kept per KV head (observation window included) when evict != none
    evict_window: int = 32  # last prompt queries whose attention scores the tokens (SnapKV's window)
    evict_pool: int = 7  # odd max-pooling kernel over the scores (SnapKV keeps a kept token's neighbours)
    value_dtype: str = (
        "native"  # "fp8": stored (past-window) values as e4m3 with a power-of-two scale per token
    )
    k_keep_rule: str = ""  # K's own keep rule; "" follows keep_rule (see side_keep_rule)
    v_keep_rule: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "k_sparsity", _sparsity("kv.k_sparsity", self.k_sparsity))
        object.__setattr__(self, "v_sparsity", _sparsity("kv.v_sparsity", self.v_sparsity))
        _choice("kv.allocation", self.allocation, ALLOCATIONS)
        # the lists' lengths as given, checked against the model (check_layers) even where a uniform list
        # collapses below; not a field: no part of the job id
        object.__setattr__(self, "_given_layers", {})
        for side in ("k", "v"):
            key = f"{side}_layer_sparsity"
            layers = _layer_list(f"kv.{key}", getattr(self, key))
            object.__setattr__(self, key, layers)
            if not layers:
                continue
            self._given_layers[side] = len(layers)
            if self.allocation != "uniform":
                raise ConfigError(
                    f"kv.{key} and kv.allocation={self.allocation!r} are mutually exclusive: give explicit "
                    "per-layer lists or an allocation rule (uniform, error, error_head), not both"
                )
            mean = sum(layers) / len(layers)
            given = getattr(self, f"{side}_sparsity")
            if given != 0.0 and abs(given - mean) > 1e-9:
                raise ConfigError(
                    f"kv.{side}_sparsity={given!r} disagrees with the mean {mean:g} of kv.{key}; leave "
                    f"kv.{side}_sparsity at 0 (it is set to the list's mean)"
                )
            object.__setattr__(self, f"{side}_sparsity", mean)
            if len(set(layers)) == 1:  # one value for every layer is the uniform policy: the same job id
                object.__setattr__(self, key, ())
                object.__setattr__(self, f"{side}_sparsity", layers[0])
        for side in ("k", "v"):
            _choice(f"kv.{side}_direction", getattr(self, f"{side}_direction"), DIRECTIONS)
            _choice(f"kv.{side}_scorer", getattr(self, f"{side}_scorer"), SCORERS)
            if getattr(self, f"{side}_scorer") == "think":
                # ThinK is structured by definition (whole channels); record the direction it really uses.
                object.__setattr__(self, f"{side}_direction", "channel")
            if getattr(self, f"{side}_sparsity") == 0.0:
                # Nothing is pruned: direction and scorer are moot, so equal policies get equal job ids.
                object.__setattr__(self, f"{side}_direction", "token")
                object.__setattr__(self, f"{side}_scorer", "magnitude")
        _choice("kv.keep_rule", self.keep_rule, KEEP_RULES)
        self._check_keep_rules()
        _choice("kv.mode", self.mode, MODES)
        if self.k_sparsity == 0.0 and self.v_sparsity == 0.0:
            object.__setattr__(self, "allocation", "uniform")  # nothing to allocate: one dense job id
        if self.allocation != "uniform":
            for side in ("k", "v"):
                rule = getattr(self, side)
                if rule.active and (rule.direction != "token" or rule.scorer == "think"):
                    raise ConfigError(
                        f"kv.allocation={self.allocation!r} needs per-token rules, got kv.{side}: {rule.label()} "
                        "(allowed scorers: magnitude, output_aware with direction token)"
                    )
            for side in ("k", "v"):  # a side that prunes nothing has no keep to allocate: its rule is moot
                if getattr(self, side).active and self.side_keep_rule(side) != "exact":
                    raise ConfigError(
                        f"kv.allocation={self.allocation!r} needs {self.keep_rule_key(side)}=exact (one keep count "
                        f"per token), got {self.side_keep_rule(side)!r}"
                    )
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ConfigError(f"kv.window={self.window!r} must be an integer >= 0")
        self._check_eviction()
        self._check_value_dtype()
        if self.dense:
            # nothing is pruned: the window and the keep rule are moot, so every dense spelling is one job id
            object.__setattr__(self, "window", KVConfig.window)
            object.__setattr__(self, "keep_rule", KVConfig.keep_rule)
        if self.k_keep_rule and self.v_keep_rule:
            # both sides carry their own rule, so keep_rule decides nothing: K's takes its place (one spelling,
            # hence one job id, per effective policy)
            object.__setattr__(self, "keep_rule", self.k_keep_rule)
            object.__setattr__(self, "k_keep_rule", "")
            if self.v_keep_rule == self.keep_rule:
                object.__setattr__(self, "v_keep_rule", "")

    def _check_keep_rules(self) -> None:
        """The per-side rules: each a keep rule or "" (follow kv.keep_rule); word and N:M only on per-token sides.
        A side that prunes nothing, or repeats kv.keep_rule, is recorded as "": equal policies, equal job ids."""
        for side in ("k", "v"):
            key = f"{side}_keep_rule"
            value = getattr(self, key)
            if value != "" and value not in KEEP_RULES:
                raise ConfigError(
                    f"kv.{key}={value!r} is not allowed; choose one of {', '.join(KEEP_RULES)}, or '' to follow "
                    "kv.keep_rule"
                )
            if not getattr(self, side).active or value == self.keep_rule:
                object.__setattr__(self, key, "")
        for side in ("k", "v"):
            rule, keep, key = getattr(self, side), self.side_keep_rule(side), self.keep_rule_key(side)
            if keep in ("word", *NM_RULES) and rule.active and rule.direction != "token":
                # per-channel groups and ThinK rank over tokens or whole channels: no per-token words to split
                unit = "32-channel words" if keep == "word" else f"{keep[2:].rstrip('sc')}-channel groups"
                raise ConfigError(
                    f"{key}={keep!r} splits each token's keep count over its {unit} and needs per-token rules, but "
                    f"kv.{side}_direction={rule.direction!r} (kv.{side}_scorer={rule.scorer!r}); allowed with "
                    f"{keep}: kv.{side}_direction=token and kv.{side}_scorer=magnitude or output_aware (or "
                    f"{key.removeprefix('kv.')} exact/reference)"
                )

    def side_keep_rule(self, side: str) -> str:
        """The keep rule `side` ("k" or "v") prunes with: its own kv.<side>_keep_rule, else kv.keep_rule."""
        if side not in ("k", "v"):
            raise ValueError(f"side must be 'k' or 'v', got {side!r}")
        return getattr(self, f"{side}_keep_rule") or self.keep_rule

    def keep_rule_key(self, side: str) -> str:
        """The key that set `side`'s keep rule, for error messages: kv.<side>_keep_rule or kv.keep_rule."""
        return f"kv.{side}_keep_rule" if getattr(self, f"{side}_keep_rule") else "kv.keep_rule"

    def _check_value_dtype(self) -> None:
        _choice("kv.value_dtype", self.value_dtype, VALUE_DTYPES)
        if self.value_dtype == "native":
            return
        if self.dense:
            raise ConfigError(
                f"kv.value_dtype={self.value_dtype!r} stores the values of pruned tokens, but nothing is pruned "
                "(kv.k_sparsity=kv.v_sparsity=0): set a sparsity"
            )
        for side in ("k", "v"):
            rule = getattr(self, side)
            if rule.active and rule.direction != "token":
                raise ConfigError(
                    f"kv.value_dtype={self.value_dtype!r} quantises each token as it leaves the window and needs "
                    f"per-token rules, but kv.{side}_direction={rule.direction!r} (kv.{side}_scorer={rule.scorer!r})"
                )
        if self.allocation != "uniform":
            raise ConfigError(
                f"kv.value_dtype={self.value_dtype!r} needs the fixed layout (one keep count per layer), but "
                f"kv.allocation={self.allocation!r} gives each row and head its own"
            )
        for side in ("k", "v"):
            rule = getattr(self, side)
            if rule.active and self.side_keep_rule(side) == "reference" and rule.scorer == "magnitude":
                key = self.keep_rule_key(side)
                raise ConfigError(
                    f"kv.value_dtype={self.value_dtype!r} needs the fixed layout (one keep count per token), but "
                    f"{key}='reference' with kv.{side}_scorer='magnitude' keeps threshold ties (a varying "
                    f"count); use {key.removeprefix('kv.')}=exact or word"
                )

    def _check_eviction(self) -> None:
        _choice("kv.evict", self.evict, EVICTIONS)
        for key in ("evict_window", "evict_pool", "token_budget"):  # bad values fail even where they are moot
            value = getattr(self, key)
            least = 0 if key == "token_budget" and self.evict == "none" else 1
            # a budget's real bound, named at once (0 and 16 were refused by two different messages)
            budget = key == "token_budget" and least
            bound = f"> kv.evict_window={self.evict_window}" if budget else f">= {least}"
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"kv.{key}={value!r} must be an integer {bound} with kv.evict={self.evict}")
        if self.evict_pool % 2 == 0:
            raise ConfigError(f"kv.evict_pool={self.evict_pool} must be odd (a centred pooling kernel)")
        if self.evict == "none":
            if self.token_budget:  # a budget alone evicts nothing: say so rather than run an unevicted job
                raise ConfigError(
                    f"kv.token_budget={self.token_budget} needs kv.evict=snapkv (kv.evict=none evicts nothing)"
                )
            # the window and the pooling are moot: equal policies get equal job ids
            for key in ("evict_window", "evict_pool"):
                object.__setattr__(self, key, self.__dataclass_fields__[key].default)
            return
        if self.token_budget <= self.evict_window:
            raise ConfigError(
                f"kv.token_budget={self.token_budget} must be > kv.evict_window={self.evict_window}: "
                "the budget includes the observation window, which is always kept"
            )
        channel = [s for s in ("k", "v") if getattr(self, f"{s}_direction") != "token"]
        if channel:
            side = channel[0]
            key = f"{side}_scorer" if getattr(self, f"{side}_scorer") == "think" else f"{side}_direction"
            raise ConfigError(
                f"kv.{key}={getattr(self, key)!r} with kv.evict={self.evict}: eviction composes with per-token "
                "rules only (ThinK and per-channel rules rank each row's whole, unevicted prompt)"
            )

    def layer_rule(self, side: str, layer: int) -> PruneRule:
        """Layer `layer`'s rule for `side` ("k" or "v"): its list entry if lists are given, else the shared rule."""
        rule = getattr(self, side)
        layers = getattr(self, f"{side}_layer_sparsity")
        if not layers:
            return rule
        return PruneRule(layers[layer], rule.direction, rule.scorer)

    def check_layers(self, num_layers: int) -> None:
        """Raise unless every per-layer list has one entry per layer of the model (a uniform list too, though it
        runs as the uniform policy)."""
        for side in ("k", "v"):
            given = len(getattr(self, f"{side}_layer_sparsity")) or self._given_layers.get(side, 0)
            if given and given != num_layers:
                raise ConfigError(
                    f"kv.{side}_layer_sparsity has {given} entries but the model has {num_layers} layers"
                )

    @property
    def k(self) -> PruneRule:
        return PruneRule(self.k_sparsity, self.k_direction, self.k_scorer)

    @property
    def v(self) -> PruneRule:
        return PruneRule(self.v_sparsity, self.v_direction, self.v_scorer)

    @property
    def dense(self) -> bool:
        return not (self.k.active or self.v.active)

    def label(self) -> str:
        """A short human name for tables: 'dense', 'K0.5 V0.5', 'ThinK-K0.5', 'K0.7(oa) V0(…)', 'snapkv1024 K0.5 V0.5'."""
        if self.evict != "none":
            rest = "" if self.dense else " " + self._prune_label()
            extra = f"/w{self.evict_window}" if self.evict_window != 32 else ""
            extra += f"/p{self.evict_pool}" if self.evict_pool != 7 else ""
            return f"{self.evict}{self.token_budget}{extra}{rest}"
        if self.dense:
            return "dense"
        return self._prune_label()

    def _prune_label(self) -> str:
        parts = []
        for side, rule in (("K", self.k), ("V", self.v)):
            if not rule.active:
                continue
            if rule.scorer == "think":
                parts.append(f"ThinK-{side}{rule.sparsity:g}")
                continue
            tag = {"token": "", "channel": "ch"}[rule.direction] + {"magnitude": "", "output_aware": "oa"}[
                rule.scorer
            ]
            parts.append(f"{side}{rule.sparsity:g}" + (f"[{tag}]" if tag else ""))
        suffix = f" w{self.window}" if self.window != 32 else ""
        rules = {s: self.side_keep_rule(s) for s in ("k", "v") if getattr(self, s).active}
        if len(set(rules.values())) > 1:  # the sides prune under different rules: name both
            suffix += "".join(f" {s}-{_RULE_TAGS.get(r, r)}" for s, r in rules.items())
        else:
            rule = next(iter(rules.values()), self.keep_rule)
            suffix += {"exact": "", "reference": " ref"}.get(rule, f" {rule}")
        suffix += " per-layer" if self.k_layer_sparsity or self.v_layer_sparsity else ""
        suffix += f" alloc-{self.allocation}" if self.allocation != "uniform" else ""
        suffix += f" {self.value_dtype}" if self.value_dtype != "native" else ""
        return " ".join(parts) + suffix

    def to_dict(self) -> dict[str, Any]:
        """All fields, except later additions still at their default (:data:`ID_OPTIONAL`): a new knob must not
        change the job id, hence invalidate the finished results, of policies that do not use it."""
        data = asdict(self)
        for key in ID_OPTIONAL:
            if data[key] == self.__dataclass_fields__[key].default:
                del data[key]
        return data

    @classmethod
    def from_mapping(cls, cfg: Any) -> KVConfig:
        fields = cls.__dataclass_fields__
        data = dict(cfg)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown kv key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        return cls(**data)
