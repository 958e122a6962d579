import random

import pytest

from bimguard.probability import birthday, next_disk_collides


@pytest.mark.parametrize("n, p", [(20, 0.0029), (50, 0.0185), (100, 0.0728), (200, 0.2623), (300, 0.4961),
                                  (500, 0.8514), (1000, 0.9995)])
def test_birthday_bound(n, p):
    assert birthday(n) == pytest.approx(p, abs=5e-4)


def test_edges():
    assert birthday(0) == birthday(1) == 0.0
    assert birthday(2) == pytest.approx(1 / 65536)
    assert birthday(70000) == 1.0
    assert next_disk_collides(0) == 0 and next_disk_collides(65536) == 1.0


def test_birthday_agrees_with_simulation():
    rng = random.Random(3)
    trials = 4000
    hits = sum(len({rng.randrange(65536) for _ in range(300)}) < 300 for _ in range(trials))
    assert abs(hits / trials - birthday(300)) < 0.03
