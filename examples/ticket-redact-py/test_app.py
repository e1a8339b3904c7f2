"""The rules, tested natively: `python -m unittest` with sdk/python on PYTHONPATH (README)."""

import unittest

from acpd_plugin import ConfigError, LogEdits, SpanEdits
from acpd_plugin.testing import Batch

from app import TicketRedact


class TicketRedactTest(unittest.TestCase):
    def test_tickets_and_customers_leave_spans_and_logs(self):
        p = TicketRedact({"customers": ["Acme Corp", "Globex"]})
        b = Batch().span("fix OPS-1234", {"gen_ai.input.messages": "acme corp asks about OPS-77", "n": 7})
        e = SpanEdits()
        p.on_spans(b.spans_view(), e)
        name, attrs = b.apply_spans(e)[0]
        self.assertEqual(name, "fix [ticket]")
        self.assertEqual(attrs["gen_ai.input.messages"], "[customer] asks about [ticket]")
        self.assertEqual(attrs["n"], 7)

        l = Batch().log("Globex reopened SEC-9", "acpd.child.stderr")
        e = LogEdits()
        p.on_logs(l.logs_view(), e)
        self.assertEqual(l.apply_logs(e)[0][0], "[customer] reopened [ticket]")

    def test_offsets_are_bytes_not_characters(self):
        p = TicketRedact({"customers": ["Globex"]})
        b = Batch().span("café ☕ OPS-1", {"x": "naïve Globex über OPS-22 ✓"})
        e = SpanEdits()
        p.on_spans(b.spans_view(), e)
        name, attrs = b.apply_spans(e)[0]
        self.assertEqual(name, "café ☕ [ticket]")
        self.assertEqual(attrs["x"], "naïve [customer] über [ticket] ✓")

    def test_hashes_keep_the_same_ticket_recognisable(self):
        p = TicketRedact({"hash_key": "pii"})
        b = Batch().span("a", {"x": "OPS-1", "y": "see OPS-1"})
        e = SpanEdits()
        p.on_spans(b.spans_view(), e)
        attrs = b.apply_spans(e)[0][1]
        self.assertTrue(attrs["x"].startswith("[ticket:"), attrs)
        self.assertEqual(attrs["y"], "see " + attrs["x"])

    def test_a_bad_pattern_is_refused_at_init(self):
        with self.assertRaises(ConfigError):
            TicketRedact({"ticket_pattern": "("})

    def test_an_unknown_setting_is_refused(self):
        with self.assertRaises(ConfigError):
            TicketRedact({"customer": ["typo"]})


if __name__ == "__main__":
    unittest.main()
