"""The red-team suite: OWASP-tagged probes, deterministic detectors, a release gate.

``bastion redteam run SUITE.yaml`` loads a :class:`RedteamSuite`, builds probes
from the bundled seeds (:mod:`.seeds`) through converters (:mod:`.converters`),
plants fixtures (:mod:`.fixtures`), sends every probe through a gateway
(:func:`run_redteam`), decides each with a detector (:mod:`.detectors`), and
reports attack success rates (:mod:`.report`) against the gate (:mod:`.gate`).
"""

from bastion.evals.redteam.gate import Verdict, evaluate, make_redteam_gate
from bastion.evals.redteam.report import Summary, summarize, write_reports
from bastion.evals.redteam.runner import ProbeRecord, RedteamResult, run_redteam
from bastion.evals.redteam.suite import RedteamSuite, load_redteam_suite

__all__ = [
    "ProbeRecord",
    "RedteamResult",
    "RedteamSuite",
    "Summary",
    "Verdict",
    "evaluate",
    "load_redteam_suite",
    "make_redteam_gate",
    "run_redteam",
    "summarize",
    "write_reports",
]
