"""Training: the loop that turns a recipe into a recorded run (``loop``), the fast path's switches
(``fast``, ``fused_step``), several processes (``distributed``) and evaluation on a split (``evaluate``)."""
