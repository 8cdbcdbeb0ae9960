"""reasoning_circuits: measure how reasoning models use their chain of thought.

Data flows one way::

    Trace ──► AttentionProfile / ProfileSet ──► rank_heads ──► HeadRanking
          ──► HeadIntervention / patching (clean vs corrupted PatchPair) ──► effect

>>> import reasoning_circuits as rc
>>> model = rc.testing.tiny_gpt2()
>>> trace = rc.Trace.from_parts("Q: 2+2?", "\\n2+2=4.\\n", " The answer is 4.", model.tokenizer)
>>> profile = rc.AttentionProfile.compute(model, trace)
>>> profile.mass("answer", "reasoning").shape
(2, 4)
"""

from reasoning_circuits import (
    anchor_records,
    anchors,
    categories,
    collection,
    comparison,
    datasets,
    effects,
    evaluation,
    fitting,
    generation,
    grading,
    judging,
    metrics,
    organism,
    pairs,
    patching,
    plotting,
    prompts,
    reading,
    receivers,
    rollouts,
    rows,
    scaleout,
    stats,
    study_figures,
    testing,
    verification,
)
from reasoning_circuits.attention import AttentionProfile, ProfileSet, segment_statistics
from reasoning_circuits.effects import Effect, measure_effect
from reasoning_circuits.errors import (
    ContextLengthError,
    FileFormatError,
    ModelLoadError,
    PairAlignmentError,
    ProfileMismatchError,
    TokenizerMismatchError,
    TraceFormatError,
)
from reasoning_circuits.evaluation import Evaluation, evaluate
from reasoning_circuits.fitting import FitInfo, fit_to_context, min_fit_length
from reasoning_circuits.heads import (
    Head,
    HeadRanking,
    contrast_heads,
    induction_scores,
    previous_token_scores,
    rank_heads,
    rank_stability,
)
from reasoning_circuits.interventions import (
    HeadIntervention,
    HeadMeans,
    HeadOutputs,
    capture_head_outputs,
    mean_head_outputs,
)
from reasoning_circuits.models import load_model
from reasoning_circuits.pairs import PatchPair, align_pair, probe_pair
from reasoning_circuits.reading import SkippedRow, SkippedRowsWarning, read_traces
from reasoning_circuits.sentences import split_sentences
from reasoning_circuits.trace import SEGMENT_NAMES, Segment, TokenizerFingerprint, Trace
from reasoning_circuits.verification import ArithmeticClaim, verify_arithmetic

__version__ = "0.1.0"

__all__ = [
    "SEGMENT_NAMES",
    "ArithmeticClaim",
    "AttentionProfile",
    "ContextLengthError",
    "Effect",
    "Evaluation",
    "FileFormatError",
    "FitInfo",
    "Head",
    "HeadIntervention",
    "HeadMeans",
    "HeadOutputs",
    "HeadRanking",
    "ModelLoadError",
    "PairAlignmentError",
    "PatchPair",
    "ProfileMismatchError",
    "ProfileSet",
    "Segment",
    "SkippedRow",
    "SkippedRowsWarning",
    "TokenizerFingerprint",
    "TokenizerMismatchError",
    "Trace",
    "TraceFormatError",
    "align_pair",
    "anchor_records",
    "anchors",
    "capture_head_outputs",
    "categories",
    "collection",
    "comparison",
    "contrast_heads",
    "datasets",
    "effects",
    "evaluate",
    "evaluation",
    "fit_to_context",
    "fitting",
    "generation",
    "grading",
    "induction_scores",
    "judging",
    "load_model",
    "mean_head_outputs",
    "measure_effect",
    "metrics",
    "min_fit_length",
    "organism",
    "pairs",
    "patching",
    "plotting",
    "previous_token_scores",
    "probe_pair",
    "prompts",
    "rank_heads",
    "rank_stability",
    "read_traces",
    "reading",
    "receivers",
    "rollouts",
    "rows",
    "scaleout",
    "segment_statistics",
    "split_sentences",
    "stats",
    "study_figures",
    "testing",
    "verification",
    "verify_arithmetic",
]
