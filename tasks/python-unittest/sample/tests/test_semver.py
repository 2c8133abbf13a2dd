import unittest

import semver


class ParseTest(unittest.TestCase):
    def test_plain(self):
        self.assertEqual(semver.parse("1.2.3"), (1, 2, 3))

    def test_prerelease_and_build_are_ignored(self):
        self.assertEqual(semver.parse("1.2.3-rc1+git5"), (1, 2, 3))

    def test_rejects_garbage(self):
        with self.assertRaises(ValueError):
            semver.parse("1.two.3")

    def test_compare_numerically(self):
        self.assertTrue(semver.newer("1.10.0", "1.9.9"))
