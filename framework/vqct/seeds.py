"""Every random stream a run derives from its one `seed`, in one place: streams kept apart so
that adding a component (a head, a rank, a mask) never shifts another's numbers. The formulas
are those the recorded results were made with (docs/results.md); changing one changes them."""

STREAM_STRIDE = 1_000_003  # a prime far above any seed a recipe uses: streams never meet
RANK_STRIDE = 7919  # a prime: ranks' mask streams never meet either


def heads_seed(seed: int) -> int:
    """The alignment heads' weights: the VQGAN's (and the discriminator's, built next) depend
    on the seed alone, not on which heads a recipe adds."""
    return seed + STREAM_STRIDE


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's own randomness once the identical initial weights are built."""
    return seed + rank


def mask_seed(seed: int, rank: int) -> int:
    """LG-VQ's word masks, a stream of their own: a recipe's heads never shift the global one."""
    return seed * STREAM_STRIDE + RANK_STRIDE * rank + 1
