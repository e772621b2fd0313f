"""STAND-IN alias: re-exports the chain API under the newer package spelling."""
from arnold.pipelines.megaplan.chain import (  # noqa: F401
    SYNC_CLEAN,
    SYNC_DIRTY,
    SYNC_STALE,
    ChainState,
    ChainStateError,
    _capture_sync_state,
    _classify_sync_state,
    load_chain_state,
    runtime_policy_path_for,
    save_chain_state,
    state_path_for,
)
