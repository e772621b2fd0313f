"""STAND-IN for the remote megaplan core (`python -m arnold.pipelines.megaplan`).

This is a test double used by the offline end-to-end bench. The real core is an
external product that cannot run here (it needs network access and coding-agent
credentials). The stand-in reproduces only the documented interfaces that
megaplan-cloudd relies on: the chain state file (path, fields, atomic writes),
the plan state files, `status` JSON, `init`/`auto`, and
`chain._capture_sync_state`. Its work is scripted by a control file; see
tests/bench/README.md.
"""
