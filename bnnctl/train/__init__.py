"""Training: the loop that turns a recipe into a recorded run (``loop``), the step it runs (``step``),
the fast path's switches (``fast``, ``fused_step``), several processes (``distributed``); evaluation on a
split is ``bnnctl.core.evaluation``."""
