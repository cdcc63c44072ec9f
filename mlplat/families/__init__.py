"""Model families: one small model per entity (store, region, customer) trained, validated,
promoted and rolled back as one job; members are ordinary model versions whose weights share a pack."""

from mlplat.families.config import FamilyConfig, FamilyFit, load_family_config, parse_family_config
from mlplat.families.policy import MemberStep, MemberVerdict, StepAction, Verdict, member_name
from mlplat.families.promotion import BulkResult, promote_family, rollback_family
from mlplat.families.record import FamilyMember, FamilyVersion, family_versions, get_family, list_families, member_states
from mlplat.families.training import FamilyTrainResult, train_family
from mlplat.families.validation import FamilyValidation, validate_family

__all__ = [
    "FamilyConfig",
    "FamilyFit",
    "load_family_config",
    "parse_family_config",
    "FamilyVersion",
    "FamilyMember",
    "get_family",
    "family_versions",
    "list_families",
    "member_states",
    "member_name",
    "train_family",
    "FamilyTrainResult",
    "validate_family",
    "FamilyValidation",
    "MemberVerdict",
    "Verdict",
    "promote_family",
    "rollback_family",
    "BulkResult",
    "MemberStep",
    "StepAction",
]
