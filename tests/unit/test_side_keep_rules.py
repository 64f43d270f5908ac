"""Per-side keep rules (`kv.k_keep_rule`, `kv.v_keep_rule`): the effective rule of each side, the validation of
each side under its own key, the label, one spelling per effective policy, and unchanged job ids of policies that
do not use them (recomputed from committed result files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mustafar.cache import nm_group, nm_strided, word_quota
from mustafar.config import ConfigError, KVConfig, PruneRule
from mustafar.pruning import Observation, SidePruner
from mustafar.pruning.keep import NM_GROUPS
from tests.unit.test_nm_rule import hand_nm_mask
from tests.unit.test_word_rule import hand_word_mask

ROOT = Path(__file__).resolve().parents[2]
MIXED = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", v_keep_rule="nm4")


def test_side_keep_rule_follows_keep_rule_unless_a_side_has_its_own():
    plain = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word")
    assert (plain.side_keep_rule("k"), plain.side_keep_rule("v")) == ("word", "word")
    assert (MIXED.side_keep_rule("k"), MIXED.side_keep_rule("v")) == ("word", "nm4")
    assert (MIXED.keep_rule_key("k"), MIXED.keep_rule_key("v")) == ("kv.keep_rule", "kv.v_keep_rule")
    assert MIXED.keep_rule == "word"  # the shared key is untouched
    with pytest.raises(ValueError, match="side must be 'k' or 'v', got 'q'"):
        MIXED.side_keep_rule("q")


def test_label_names_both_rules_only_when_they_differ():
    assert MIXED.label() == "K0.5 V0.5 k-word v-nm4"
    assert (
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="reference").label() == "K0.5 V0.5 k-ref v-exact"
    )
    assert KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm4").label() == "K0.5 V0.5 nm4"
    assert KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="reference").label() == "K0.5 V0.5 ref"
    # one pruned side: its own rule, in the shared-rule form
    assert KVConfig(v_sparsity=0.5, v_keep_rule="nm4").label() == "V0.5 nm4"
    assert KVConfig(k_sparsity=0.5, v_sparsity=0.5, window=8, v_keep_rule="word").label() == (
        "K0.5 V0.5 w8 k-exact v-word"
    )


def test_one_spelling_per_effective_policy():
    # a side that prunes nothing, or repeats keep_rule, records ""
    assert KVConfig(k_sparsity=0.5, v_keep_rule="nm4") == KVConfig(k_sparsity=0.5)
    assert KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", k_keep_rule="word") == KVConfig(
        k_sparsity=0.5, v_sparsity=0.5, keep_rule="word"
    )
    # both sides with their own rule: keep_rule decides nothing and takes K's
    both = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="exact", k_keep_rule="word", v_keep_rule="nm4")
    assert both == MIXED and both.to_dict() == MIXED.to_dict()
    same = KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8", v_keep_rule="nm8")
    assert same == KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm8")
    assert KVConfig.from_mapping(MIXED.to_dict()) == MIXED
    assert MIXED.to_dict()["v_keep_rule"] == "nm4" and "k_keep_rule" not in MIXED.to_dict()


def test_strided_k_preset_is_accepted_in_compressed_mode_with_a_stable_label_and_identity():
    """conf/kv/k50v50_kn8s_vnm4 (K nm8s, V nm4): the shared keep_rule decides nothing and takes K's rule, and the
    compressed policy differs from the mask one only in its mode."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        kv = OmegaConf.to_container(compose("config", overrides=["kv=k50v50_kn8s_vnm4"]).kv)
    preset = KVConfig.from_mapping(kv)
    assert preset == KVConfig(k_sparsity=0.5, v_sparsity=0.5, k_keep_rule="nm8s", v_keep_rule="nm4")
    compressed = KVConfig(**{**kv, "mode": "compressed"})
    assert preset.label() == compressed.label() == "K0.5 V0.5 k-nm8s v-nm4"
    assert compressed.to_dict() == {
        "k_sparsity": 0.5,
        "v_sparsity": 0.5,
        "k_direction": "token",
        "v_direction": "token",
        "k_scorer": "magnitude",
        "v_scorer": "magnitude",
        "window": 32,
        "keep_rule": "nm8s",
        "mode": "compressed",
        "v_keep_rule": "nm4",
    }
    assert {**preset.to_dict(), "mode": "compressed"} == compressed.to_dict()


def test_policies_without_the_new_keys_keep_their_job_ids():
    """Every committed nm_quota / word_quota job: its stored policy rebuilt by this KVConfig gives the same kv dict,
    hence the same hash of its identity (the job id's suffix)."""
    files = sorted((ROOT / "results/paper").glob("*_quota/jobs/*.json"))
    assert len(files) >= 10
    for path in files:
        stored = json.loads(path.read_text(encoding="utf-8"))
        identity = stored["identity"]
        rebuilt = {**identity, "kv": KVConfig(**identity["kv"]).to_dict()}
        assert rebuilt["kv"] == identity["kv"], path.name
        digest = hashlib.sha1(json.dumps(rebuilt, sort_keys=True, default=str).encode()).hexdigest()[:8]
        assert stored["job_id"].endswith(f"_{digest}"), path.name
    assert "k_keep_rule" not in KVConfig(k_sparsity=0.5).to_dict()


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"v_keep_rule": "words"},
            "kv.v_keep_rule='words' is not allowed; choose one of exact, reference, word, nm4, nm8, nm16, nm4s, nm8s, nm8c, "
            "nm16c, or '' to follow kv.keep_rule",
        ),
        (
            {"v_direction": "channel", "v_keep_rule": "nm4"},
            "kv.v_keep_rule='nm4' splits each token's keep count over its 4-channel groups and needs per-token "
            "rules, but kv.v_direction='channel'",
        ),
        (
            {"v_direction": "channel", "v_keep_rule": "nm16"},
            "kv.v_keep_rule='nm16' splits each token's keep count over its 16-channel groups",
        ),
        (
            {"k_direction": "channel", "k_keep_rule": "nm8s"},
            "kv.k_keep_rule='nm8s' splits each token's keep count over its 8-channel groups",
        ),
        (
            {"k_scorer": "think", "k_keep_rule": "word"},
            "kv.k_keep_rule='word' splits each token's keep count over its 32-channel words",
        ),
        ({"allocation": "error", "v_keep_rule": "word"}, "kv.allocation='error' needs kv.v_keep_rule=exact"),
        (
            {"value_dtype": "fp8", "k_keep_rule": "reference"},
            "kv.k_keep_rule='reference' with kv.k_scorer='magnitude' keeps threshold ties",
        ),
    ],
)
def test_each_side_is_validated_under_its_own_key(fields, message):
    with pytest.raises(ConfigError) as err:
        KVConfig(**{"k_sparsity": 0.5, "v_sparsity": 0.5, **fields})
    assert message in str(err.value)


def test_nm_groups_are_allowed_in_compressed_mode_and_a_channel_side_keeps_its_own_rule():
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", v_keep_rule="nm4", mode="compressed")
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm8", mode="compressed")
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="nm4s", mode="compressed")
    KVConfig(
        k_sparsity=0.5,
        v_sparsity=0.5,
        keep_rule="word",
        k_keep_rule="nm8s",
        v_keep_rule="nm4",
        mode="compressed",
    )
    # per-channel V under exact while K takes word: the side rules are checked apart
    KVConfig(k_sparsity=0.5, v_sparsity=0.5, v_direction="channel", keep_rule="exact", k_keep_rule="word")
    with pytest.raises(ConfigError, match="kv.keep_rule='word'.*kv.v_direction='channel'"):
        KVConfig(k_sparsity=0.5, v_sparsity=0.5, v_direction="channel", keep_rule="word")


def test_store_flags_per_side():
    assert (word_quota(MIXED, "k"), word_quota(MIXED, "v")) == (True, True)
    assert (nm_group(MIXED, "k"), nm_group(MIXED, "v")) == (0, 4)
    nm8_k = KVConfig(k_sparsity=0.5, k_keep_rule="nm8")
    assert (nm_group(nm8_k, "k"), nm_group(nm8_k, "v")) == (8, 0)  # V prunes nothing: a plain store
    v16 = KVConfig(k_sparsity=0.7, v_sparsity=0.6875, keep_rule="word", v_keep_rule="nm16")
    assert [(nm_group(v16, s), nm_strided(v16, s), word_quota(v16, s)) for s in "kv"] == [
        (0, False, True),
        (16, False, True),
    ]
    assert not word_quota(nm8_k, "v")
    assert not (nm_strided(MIXED, "k") or nm_strided(MIXED, "v") or nm_strided(nm8_k, "k"))
    strided = KVConfig(k_sparsity=0.5, keep_rule="nm4s")
    assert (nm_group(strided, "k"), word_quota(strided, "k"), nm_strided(strided, "k")) == (4, True, True)
    assert (nm_group(strided, "v"), word_quota(strided, "v"), nm_strided(strided, "v")) == (0, False, False)
    k8s = KVConfig(k_sparsity=0.5, v_sparsity=0.5, keep_rule="word", k_keep_rule="nm8s", v_keep_rule="nm4")
    assert [(nm_group(k8s, s), nm_strided(k8s, s), word_quota(k8s, s)) for s in "kv"] == [
        (8, True, True),
        (4, False, True),
    ]


@pytest.mark.parametrize("rule", ["nm4", "nm8", "nm16", "nm4s", "nm8s", "word"])
def test_side_pruner_fuses_quota_rules(rule):
    """The pack kernels prune word quotas and N:M groups (consecutive or strided) themselves (packs_topk); a mask,
    when asked for, follows the side's rule."""
    pruner = SidePruner(PruneRule(0.5, "token", "magnitude"), "v", rule, window=0)
    assert pruner.packs_topk
    tail = torch.randn(1, 2, 5, 64, generator=torch.Generator().manual_seed(4))
    n, mask = pruner.step(tail, Observation(q_len=5))
    assert n == 5
    if rule == "word":
        assert torch.equal(mask, hand_word_mask(tail.abs(), 32))
    else:
        group, strided = NM_GROUPS[rule]
        assert torch.equal(mask, hand_nm_mask(tail.abs(), group // 2, group, strided=strided))
