"""What ``bnnctl train --fast`` sets: recipe overrides per device type (data, like the recipes)."""

# What `bnnctl train --fast` switches on: every fast.* option that leaves the paper's semantics
# (batch, schedule, binarization, clipping) alone and pays off on that device. Not compile (minutes
# of start-up; opt in with --set fast.compile=true) and not bf16 (it rounds pre-BN sums and
# gradients). tf32 rounds the first layer's real-valued inputs and the gradients to a 10-bit
# mantissa; the +-1 x +-1 products of every other layer stay exact.
# foreach_clip is off in both: clamp_min_ and clamp_max_ over the list are two passes over the
# weights, a clamp_ per layer is one, and for the paper's layers memory traffic is what costs.
# On the CPU the fused step (optimizer, clipping and binarization in one pass per tensor; exact int8
# products where a layer's inputs are integers) replaces fused_optimizer and foreach_clip.
FAST_PRESETS: dict[str, list[str]] = {
    "cpu": ["fast.data_on_device=true", "fast.fused_step=true", "fast.int8_forward=true", "fast.reuse_memory=true",
            "fast.foreach_clip=false"],
    "cuda": ["fast.data_on_device=true", "fast.pretransform=true", "fast.tf32=true", "fast.channels_last=true",
             "fast.foreach_clip=false"],
}
