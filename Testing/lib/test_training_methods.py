"""The source papers' training methods against values computed by hand on tiny tensors: Dice + CE,
balanced Dice (BD) loss, generalized Dice + focal, SegResNetVAE's VAE term, V-Net through a card,
TLVR label smoothing, greedy parameter averaging (GPA) and the masked loss of mixed labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.develop.training.bd_loss import BalancedDiceLoss, category_weights
from LiverTumorSegLib.develop.training.gdl_focal import GeneralizedDiceFocalLoss, focal, generalized_dice
from LiverTumorSegLib.develop.training.loss_terms import DiceCELoss, cross_entropy, one_hot, soft_dice


def logits_for(foreground_probabilities) -> torch.Tensor:
    """(1, 2, 1, 1, n) logits whose softmax foreground is the given probabilities."""
    p = torch.tensor(foreground_probabilities, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).view(1, 2, 1, 1, -1)


def target_for(foreground) -> torch.Tensor:
    return one_hot(torch.tensor(foreground, dtype=torch.float64).view(1, 1, 1, 1, -1))


# --- Dice and cross entropy -------------------------------------------------------------------

def test_cross_entropy_and_soft_dice_by_hand():
    logits, target = logits_for([0.5, 0.75]), target_for([1, 1])
    assert float(cross_entropy(logits, target)) == pytest.approx((-math.log(0.5) - math.log(0.75)) / 2)
    known = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2)
    assert float(cross_entropy(logits, target, known)) == pytest.approx(-math.log(0.5))
    dice = soft_dice(torch.softmax(logits, 1), target)
    # foreground: 2 (0.5 + 0.75) / ((0.25 + 0.5625) + 2); background: no reference, nothing predicted right
    assert float(dice[0, 1]) == pytest.approx(2.5 / 2.8125, abs=1e-5)
    assert float(dice[0, 0]) == pytest.approx(1e-5 / (0.25 + 0.0625), rel=1e-3)
    loss = DiceCELoss()(logits, target)
    expected = ((1 - 2.5 / 2.8125) + (1 - float(dice[0, 0]))) / 2 + (-math.log(0.5) - math.log(0.75)) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-5)


def test_soft_targets_are_class_probabilities():
    soft = one_hot(torch.tensor([0.92, 0.02]).view(1, 1, 2))
    assert soft[0, :, 0].tolist() == pytest.approx([0.08, 0.92]) and soft[0, :, 1].tolist() == pytest.approx([0.98, 0.02])


# --- BD loss ----------------------------------------------------------------------------------

def test_balanced_dice_weights_each_case_and_category_by_hand():
    assert category_weights(["a", "a", "a", "b"]) == {"a": pytest.approx(4 / 6), "b": pytest.approx(2.0)}
    logits = torch.cat([logits_for([0.5, 0.75]), logits_for([0.5, 0.5]), logits_for([0.3, 0.3])])
    target = torch.cat([target_for([1, 1]), target_for([1, 0]), target_for([0, 0])])
    weights = torch.tensor([1.0, 3.0, 5.0])
    bd = BalancedDiceLoss(ce_weight=0.0)(logits, target, sample_weights=weights)
    d0 = 2.5 / 2.8125  # 2 (0.5 + 0.75) / ((0.25 + 0.5625) + 2)
    d1 = 1.0 / 1.5  # 2 (0.5) / ((0.25 + 0.25) + 1)
    # the third sample holds no foreground: out of the Dice term, its weight 5 plays no part
    assert float(bd) == pytest.approx((1 * (1 - d0) + 3 * (1 - d1)) / 4, abs=1e-5)
    unweighted = BalancedDiceLoss(ce_weight=0.0)(logits, target)
    assert float(unweighted) == pytest.approx(((1 - d0) + (1 - d1)) / 2, abs=1e-5)
    with_ce = BalancedDiceLoss()(logits, target, sample_weights=weights)
    assert float(with_ce) == pytest.approx(float(bd) + float(cross_entropy(logits, target)), abs=1e-9)


def test_balanced_dice_of_a_tumour_free_batch_is_its_cross_entropy():
    logits, target = logits_for([0.2, 0.1]), target_for([0, 0])
    assert float(BalancedDiceLoss()(logits, target)) == pytest.approx(float(cross_entropy(logits, target)))


# --- generalized Dice + focal -----------------------------------------------------------------

def test_generalized_dice_by_hand():
    # equal volumes (1 voxel each): intersection 0.5 + 0.25, denominator (1.25 + 1) + (0.75 + 1)
    gdl = generalized_dice(torch.softmax(logits_for([0.5, 0.75]), 1), target_for([1, 0]))
    assert float(gdl[0]) == pytest.approx(1 - 1.5 / 4.0, abs=1e-5)
    # foreground 1 voxel (w 1), background 2 voxels (w 1/4), p = 0.5 everywhere
    gdl = generalized_dice(torch.softmax(logits_for([0.5, 0.5, 0.5]), 1), target_for([1, 0, 0]))
    assert float(gdl[0]) == pytest.approx(1 - 2 * 0.75 / 3.375, abs=1e-5)
    # no foreground: its infinite weight becomes the background's 1/9
    gdl = generalized_dice(torch.softmax(logits_for([0.5, 0.5, 0.5]), 1), target_for([0, 0, 0]))
    assert float(gdl[0]) == pytest.approx(1 - (2 / 6) / (2 / 3), abs=1e-5)


def test_focal_and_the_combined_loss_by_hand():
    logits, target = logits_for([0.75, 0.5]), target_for([1, 0])
    fg = -2.0 * (1 - 0.75) ** 2 * math.log(0.75)  # alpha_fg 2
    bg = -1.0 * (1 - 0.5) ** 2 * math.log(0.5)  # alpha_bg 1
    assert float(focal(logits, target)) == pytest.approx((fg + bg) / 2)
    gdl = float(generalized_dice(torch.softmax(logits, 1), target)[0])
    combined = GeneralizedDiceFocalLoss(gdl_weight=1.0, focal_weight=0.5)(logits, target)
    assert float(combined) == pytest.approx(gdl + 0.5 * (fg + bg) / 2)


# --- masked loss (mixed labels) ---------------------------------------------------------------

@pytest.mark.parametrize("loss", [DiceCELoss(), BalancedDiceLoss(), GeneralizedDiceFocalLoss()])
def test_a_sample_without_known_voxels_adds_nothing(loss):
    logits = torch.cat([logits_for([0.6, 0.3]), logits_for([0.9, 0.1])])
    target = torch.cat([target_for([1, 0]), target_for([0, 1])])
    known = torch.cat([torch.ones(1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 1, 2)])
    assert float(loss(logits, target, known)) == pytest.approx(float(loss(logits[:1], target[:1])), abs=1e-9)
    assert float(loss(logits, target, torch.zeros_like(known))) == 0.0


def test_mixed_labels_compose_targets_and_known_voxels():
    from LiverTumorSegLib.develop.training.mixed_labels import IGNORE_LABEL, AnnotatedStructures, compose_labels

    labels = np.array([0, 1, 2, IGNORE_LABEL, 0])
    composed, known = compose_labels(labels, AnnotatedStructures(), "tumor")
    assert composed.tolist() == [0, 1, 2, 0, 0] and known.tolist() == [1, 1, 1, 0, 1]
    # tumours annotated, liver not: the liver from the stage-1 model, its uncertain voxels unknown
    tumour_only = np.array([0, 0, 2, 0, 0])
    pseudo = np.array([0.05, 0.95, 0.5, 0.6, 0.0])
    composed, known = compose_labels(tumour_only, AnnotatedStructures(liver=False), "liver", pseudo)
    assert composed.tolist() == [0, 1, 2, 1, 0] and known.tolist() == [1, 1, 1, 0, 1]
    # liver annotated, tumours not: for a tumour model only the voxels outside the liver are known
    liver_only = np.array([0, 1, 1, 0])
    composed, known = compose_labels(liver_only, AnnotatedStructures(tumor=False), "tumor")
    assert composed.tolist() == [0, 1, 1, 0] and known.tolist() == [1, 0, 0, 1]
    with pytest.raises(LiverTumorSegError, match="pseudo-labels"):
        compose_labels(tumour_only, AnnotatedStructures(liver=False), "tumor")


# --- SegResNetVAE: the VAE term is trained ---------------------------------------------------

def tiny_segresnetvae() -> torch.nn.Module:
    from LiverTumorSegLib.models.networks import build_network

    return build_network("SegResNetVAE", {"input_image_size": [16, 16, 16], "in_channels": 1, "out_channels": 2,
                                          "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "vae_nz": 8})


def test_network_loss_adds_the_weighted_vae_term():
    from LiverTumorSegLib.develop.training.vae_loss import network_loss

    class WithVae(torch.nn.Module):
        def forward(self, x):
            return x, torch.tensor(2.0)

    logits, target = logits_for([0.5, 0.75]).float(), target_for([1, 1]).float()
    total, parts = network_loss(WithVae(), logits, target, DiceCELoss(), vae_weight=0.1)
    assert parts["vae"] == 2.0 and float(total) == pytest.approx(parts["segmentation"] + 0.2)
    total, parts = network_loss(torch.nn.Identity(), logits, target, DiceCELoss())
    assert "vae" not in parts and float(total) == pytest.approx(parts["segmentation"])


def test_segresnetvae_trains_its_vae_branch():
    from LiverTumorSegLib.develop.training.vae_loss import network_loss

    torch.manual_seed(0)
    network = tiny_segresnetvae().train()
    batch = torch.randn(2, 1, 16, 16, 16)
    target = one_hot((batch > 0.5).float())
    total, parts = network_loss(network, batch, target, DiceCELoss(), vae_weight=0.1)
    assert parts["vae"] > 0 and float(total.detach()) == pytest.approx(parts["segmentation"] + 0.1 * parts["vae"], rel=1e-5)
    total.backward()
    assert network.vae_fc1.weight.grad is not None and float(network.vae_fc1.weight.grad.abs().sum()) > 0
    network.eval()
    with torch.no_grad():
        logits, vae = network(batch)
    assert vae is None and logits.shape == (2, 2, 16, 16, 16)


# --- V-Net through a card ---------------------------------------------------------------------

def test_vnet_builds_from_a_card_and_a_narrow_one_keeps_monai_layer_names(tmp_path):
    from monai.networks.nets import VNet

    from LiverTumorSegLib.inference import LoadedModel
    from LiverTumorSegLib.models.card import ModelCard, read_card, write_card
    from LiverTumorSegLib.models.networks import build_network
    from LiverTumorSegLib.models.weights import save_weights

    narrow = build_network("VNet", {"in_channels": 1, "out_channels": 2, "width": 2})
    monai_names = {k: v.shape for k, v in VNet(spatial_dims=3, in_channels=1, out_channels=2).state_dict().items()}
    assert set(narrow.state_dict()) == set(monai_names)
    assert sum(p.numel() for p in narrow.parameters()) < 1e6
    sha = save_weights(narrow.state_dict(), tmp_path / "vnet.safetensors")
    card = ModelCard(name="vnet", version="0", task="tumor", architecture="VNet",
                     architecture_args={"in_channels": 1, "out_channels": 2, "width": 2}, spacing_mm=(2, 2, 2),
                     patch_size=(16, 16, 16), hu_window=(-100, 200), weights_file="vnet.safetensors",
                     weights_sha256=sha)
    write_card(card, tmp_path / "vnet.json")
    model = LoadedModel.load(read_card(tmp_path / "vnet.json"))
    assert model.network(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    with pytest.raises(LiverTumorSegError, match="do not fit VNet"):
        build_network("VNet", {"in_channels": 2, "out_channels": 2, "width": 3})


def test_architecture_presets_build_and_check_the_patch():
    from LiverTumorSegLib.models.networks import build_network
    from LiverTumorSegLib.develop.training.architectures import ARCHITECTURE_PRESETS, architecture_for

    tiny = {"unet": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
            "segresnet": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
            "segresnetvae": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "vae_nz": 8},
            "vnet": {"width": 2},
            "dynunet": {"kernel_size": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "upsample_kernel_size": [[2, 2, 2]] * 2, "filters": [4, 8, 16]}}
    assert set(tiny) == set(ARCHITECTURE_PRESETS)
    for name, overrides in tiny.items():
        architecture, args = architecture_for(name, 1, (16, 16, 16), overrides)
        out = build_network(architecture, args).eval()(torch.zeros(1, 1, 16, 16, 16))
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape == (1, 2, 16, 16, 16), name
    with pytest.raises(LiverTumorSegError, match="multiple of 16"):
        architecture_for("vnet", 1, (24, 16, 16))


# --- TLVR label smoothing ---------------------------------------------------------------------

def test_tlvr_regression_recovers_a_linear_relation_and_fills_missing_values():
    from LiverTumorSegLib.develop.training.tlvr import TlvrRegression, case_tlvr, numeric_columns

    records = [{"TCIA_ID": f"P{x}", "AFP": x, "Sex": "M"} for x in (1, 2, 3, 4)]
    assert numeric_columns(records) == ["AFP"]
    regression = TlvrRegression.fit(records, [0.1 + 0.05 * x for x in (1, 2, 3, 4)], ridge=0.0)
    assert regression.predict({"AFP": 5}) == pytest.approx(0.35)
    assert regression.predict({"AFP": None}) == pytest.approx(0.1 + 0.05 * 2.5)  # the mean of the column
    assert regression.predict({"AFP": 40}) == 1.0 and regression.predict({"AFP": -10}) == 0.0  # clipped
    assert case_tlvr(np.array([0, 1, 1, 2])) == pytest.approx(1 / 3) and case_tlvr(np.zeros(3)) == 0.0
    with pytest.raises(LiverTumorSegError, match="numeric"):
        TlvrRegression.fit(records, [0.1] * 4, columns=["Sex"])


def test_tlvr_smoothed_tumour_target_by_hand():
    from LiverTumorSegLib.develop.training.tlvr import smooth_tumor_target

    soft = smooth_tumor_target(np.array([1, 0, 0]), np.array([1, 1, 0]), clinical_tlvr=0.2, alpha=0.1)
    assert soft.dtype == np.float32 and soft.tolist() == pytest.approx([0.92, 0.02, 0.0])


# --- GPA --------------------------------------------------------------------------------------

def test_a_checkpoint_joins_the_average_only_if_validation_improves():
    from LiverTumorSegLib.develop.training.gpa import GreedyParameterAverage

    def evaluate(state):
        return -abs(float(state["w"]) - 1.0)

    def checkpoint(w, counter):
        return {"w": torch.tensor([w]), "bn.num_batches_tracked": torch.tensor(counter)}

    gpa = GreedyParameterAverage()
    assert gpa.offer("a", checkpoint(0.0, 7), evaluate)  # the first joins: score -1
    assert gpa.offer("b", checkpoint(2.0, 9), evaluate)  # average 1.0: score 0 > -1
    assert not gpa.offer("c", checkpoint(10.0, 9), evaluate)  # average 4.0: score -3
    assert not gpa.offer("d", checkpoint(1.0, 9), evaluate)  # average 1.0: score 0, not better
    assert gpa.members == ["a", "b"] and gpa.score == 0.0
    average = gpa.average()
    assert float(average["w"]) == 1.0 and int(average["bn.num_batches_tracked"]) == 7


def test_greedy_average_offers_the_best_checkpoint_first():
    from LiverTumorSegLib.develop.training.gpa import greedy_average

    def evaluate(state):
        return -abs(float(state["w"]) - 1.0)

    weights = {"x": 3.0, "y": 1.5, "z": 0.2}
    checkpoints = [(name, -abs(w - 1.0), lambda w=w: {"w": torch.tensor(w)}) for name, w in weights.items()]
    gpa = greedy_average(checkpoints, evaluate)
    # y (-0.5) first; z joins (average 0.85: -0.15); x does not (average 1.567: -0.567)
    assert gpa.members == ["y", "z"] and float(gpa.average()["w"]) == pytest.approx(0.85)
    assert gpa.score == pytest.approx(-0.15)
