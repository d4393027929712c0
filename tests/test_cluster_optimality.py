"""The cluster pass's int8 clustering is optimal: on every output channel and every whole
tensor of every corpus model's int8 weights, its squared error is never above k-means with
its centroids rounded to integers and the values reassigned (tools/check_cluster_optimality.py,
which prints the same comparison, says how the reference is made)."""

from __future__ import annotations

import numpy as np
import pytest
from check_cluster_optimality import above, int8_units, needs_clustering, reference
from conftest import all_models


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("keep_zero", [True, False])
def test_int8_clustering_is_never_above_rounded_kmeans(keep_zero):
    k = 16
    units = int8_units(all_models(), k, keep_zero)
    # A unit with at most k values to cluster keeps every value (both sides have no error):
    # only the others are compared, about half of the corpus's 29,000 units.
    needs = needs_clustering(units.hists, k, keep_zero)
    assert np.all(units.ours[~needs] == 0)
    use = np.flatnonzero(needs)
    assert use.size > 10_000
    theirs = reference(units.hists[use], k, keep_zero)
    worse = [
        f"{units.labels[use[i]]}: {units.ours[use[i]]:.0f} > {theirs[i]:.0f}"
        for i in np.flatnonzero(above(units.ours[use], theirs))
    ]
    assert not worse, f"{len(worse)} of {use.size} units above the reference: {worse[:5]}"
