"""The whole ablation study in one command (``ssanet ablation --train CONFIG``): Table 3, Tables 1
and 2 for the plain backbone and the full SSANet, and Fig. 4's statistic, trained and evaluated
from nothing on one dataset and written, with plots, into one folder.

Rows (:data:`ROWS`, the paper's Table 3 order), each a set of config overrides of the base
config: the plain backbone (``model.proposals=false``, trained with the config's ``plain``
strategy); proposals alone (P: no DSM, no OP, MAC's pair term off: ``mac_lambda=0``); P + MAC;
P + MAC + OP; P + MAC + DSM; the full SSANet; and the full SSANet with the other
``part_features`` mode. The plain backbone and the full model run with ``seeds`` seeds (mean
and standard deviation), the other rows with the first seed. Every SSANet run of seed s starts
from the plain run of seed s (``init_from``, :mod:`ssanet.warm_start`): the paper starts from an
ImageNet backbone; here the plain backbone, trained first on the same training split, plays
its part. All runs share the data, the validation split and the stages' epochs; each is
evaluated once on the test split, with the model its validation selected (``best.pt``).

Runs go to ``work_dir`` (checkpoints are large), as ``<row>-s<seed>/``; a finished run
(``job.json`` written) is not trained again, an interrupted one is resumed, so the command can
be rerun after an interruption. After every finished run the report is rewritten into
``out_dir``: ``ablation.md``, ``ablation.json``, ``ablation.png`` (Table 3), ``rotation.png``
(Table 1), ``reduced_input.png`` (Table 2), ``localization.png`` (Fig. 4), ``predictions.png``
(test images, plain prediction beside SSANet's with its part boxes) and each run's
``runs/<name>/`` (its evaluation, log and timing).

Fig. 4's statistic (:func:`ssanet.metrics.localization`): the mean distance from each
proposal's centre to the nearest visible keypoint of a discriminative part (on the synthetic
data the parts whose look differs between classes: the head, the tail, the wing when the classes
vary it), against the same for random boxes of the same sizes placed uniformly inside the image;
and (:func:`ssanet.metrics.localization_floor`) the same for an ideal proposal head on the
config's anchors, about the lowest value a learned one could reach. Both are in
:mod:`ssanet.metrics`, the plots in :mod:`ssanet.plots`, the command line
(``add_study_arguments``, ``study_command``) in ``ssanet.cli``.

The modules: :mod:`~ssanet.ablation.planning` (the rows and the jobs),
:mod:`~ssanet.ablation.scheduling` (running the jobs, each in its own process:
``python -m ssanet.ablation SPEC``) and :mod:`~ssanet.ablation.reporting` (the report).
"""

from __future__ import annotations

# torch is imported where it is used: ``ssanet --help`` reads the rows at once.
from .planning import ROWS, Job, plan
from .reporting import report
from .scheduling import run_study

__all__ = ["ROWS", "Job", "plan", "report", "run_study"]
