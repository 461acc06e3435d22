"""Training stages: which modules a stage of the config's strategy trains, on which loss terms
(paper section 3.4's three stages, or the joint alternative), and freezing the others."""

from __future__ import annotations

from torch import nn

from .config import LOSS_TERMS, MODULE_NAMES
from .model import SSANet

__all__ = ["resolve_stages", "set_train_mode", "stage_parameter_groups"]


def _present_modules(model: SSANet) -> dict[str, nn.Module]:
    return {
        name: module
        for name in MODULE_NAMES
        if isinstance(module := getattr(model, name, None), nn.Module)
    }


def resolve_stages(config: dict, model: SSANet) -> list[dict]:
    """The stages of the config's strategy that apply to ``model``, each with ``"modules"``:
    the names of its trained modules that the model has, ``"losses"`` as a list, and its
    position in the config's list as ``"index"``.

    A stage is left out when the model lacks a module of its ``requires`` (the OP stage of a
    model without OP) or every module it trains. A stage that would optimize no loss term the
    model produces is an error.
    """
    present = _present_modules(model)
    resolved = []
    for index, stage in enumerate(config["strategies"][config["strategy"]]):
        names = list(present) if stage["train"] == "all" else stage["train"]
        modules = [name for name in names if name in present]
        if not modules or not set(stage["requires"]) <= set(present):
            continue
        losses = list(LOSS_TERMS) if stage["losses"] == "all" else stage["losses"]
        produced = _loss_terms(model)
        if not set(losses) & produced:
            raise ValueError(
                f"stage {stage['name']!r} optimizes {losses}, none of which this model produces "
                f"({sorted(produced)}); the plain backbone (model.proposals=false) trains with "
                "strategy 'joint'"
            )
        resolved.append({**stage, "index": index, "modules": modules, "losses": losses})
    if not resolved:
        raise ValueError(
            f"no stage of strategy {config['strategy']!r} trains a module of the model"
        )
    return resolved


def _loss_terms(model: SSANet) -> set[str]:
    """The terms :class:`SSANetLoss` returns for ``model``'s outputs."""
    if not model.proposals:
        return {"final"}
    return {"final", "mac", "rank"} | {name for name in ("dsm", "op") if getattr(model, name)}


def stage_parameter_groups(model: SSANet, stage: dict) -> list[dict]:
    """Freezes every parameter of ``model`` outside the stage's modules and returns the SGD
    parameter groups of the others: one per module, with ``lr = stage lr * lr_scale``.

    Also puts the frozen modules in eval mode (batch-norm statistics fixed); call
    :func:`set_train_mode` after every ``model.train()``.
    """
    present = _present_modules(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups = []
    for name in stage["modules"]:
        parameters = list(present[name].parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        lr = stage["lr"] * stage["lr_scale"].get(name, 1.0)
        groups.append({"params": parameters, "lr": lr, "module": name})
    return groups


def set_train_mode(model: SSANet, stage: dict) -> None:
    """``model.train()``, with the modules the stage does not train in eval mode."""
    model.train()
    trained = set(stage["modules"])
    for name, module in _present_modules(model).items():
        if name not in trained:
            module.eval()
