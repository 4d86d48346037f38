"""What the words around a PII-shaped number say it is: a label right before it, or a telling word next to it.

    python -m data_checks.pii_context "Tracking number: 4829301756"    # print what the cues say

pii.py asks this module when a value's shape alone cannot decide:

- a dotted quad that is a valid IPv4 address may be a version ("firmware 1.0.0.12", "the 2.3.1.0 release",
  "Chrome 10.2.3.4", "4.19.0.12-generic"): a release word (build, firmware, patch, upgraded, ...) right
  before or after it, a "v", "==" or "name-" before it, a "-beta" after it; anything else leaves it an address;
- a phone-shaped digit run right after an identifier label ("Tracking #", "order no.", "Invoice:", "Ref") is
  that identifier, and one with ISBN or a book word shortly before or after it ("ISBN 10:", "(paperback)")
  is a book, unless a phone word (call, tel, ...) stands right before it;
- 9 digits after an SSN label ("SSN", "Social:", "Social Security No.", "SS#") are an SSN in any grouping.

Labels are matched as a head word followed only by filler ("number", "no.", "#", ":", "is", "for your",
...), so "Call the order line on 0306406152" has no label right before the number and stays a phone.
"""

from __future__ import annotations

import re
import sys

# What may stand between a label and its value: "Tracking number for your parcel is 4829301756".
_FILLER = (r"(?:\s*(?:[:#=.\-–(]|\([^()\n]{0,24}\)|\b(?:numbers?|num|nos?|nr|n°|ids?|codes?|notes?|slip|is|are|was"
           r"|were|will be|for|of|to|your|my|our|his|her|their|its|it|the|a|an|this|that|with|reads?|shows?|below|here)\b\.?"
           r"|\b(?:for|of|on)\s+(?:(?:your|my|our|the|this|that|a|an)\s+)?[^\W\d]+"  # "... for your purchase:"
           r"|\b(?=[A-Z\d]*\d)[A-Z\d]{1,6}\b))*\s*$")  # and code pieces before it: "Tracking 1Z 999 AA1 01 2345 6784"
_ID_NOUNS = (r"tracking|track|parcel|package|shipment|consignment|waybill|awb|order|orders|invoice|receipt|bill"
             r"|reference|ref|booking|confirmation|reservation|ticket|case|claim|policy|account|acct|customer"
             r"|client|member|membership|employee|student|patient|transaction|txn|payment|serial|s/n|sku"
             r"|part|item|model|product|article|batch|lot|po|voucher|coupon|license|licence|registration"
             r"|permit|contract|loan|document|doc|file|record|job|request|issue|bug|build|run|session"
             r"|asin|ean|upc|gtin|issn|imei|iccid|vin|isbn(?:-?1[03])?")
_PHONE_WORDS = (r"phones?|tel|telephone|tél|téléphone|telefon|mobile|mobil|portable|cell|cellphone|fax|call|calls|called"
                r"|calling|ring|dial|text|sms|whatsapp|signal|contact|reach|hotline|helpline|landline|caller")
ID_LABEL_BEFORE = re.compile(rf"(?i)(?:\b(?:{_ID_NOUNS})\b|#){_FILLER}")
PHONE_LABEL_BEFORE = re.compile(rf"(?i)\b(?:{_PHONE_WORDS})\b{_FILLER}")
ISBN_WORD = re.compile(r"(?i)\b(?:isbn|books?|edition|paperback|hardcover|hardback|publisher|published|novel)\b")
SSN_LABEL = (r"(?i:\b(?:ssn|s\.\s?s\.\s?n\.?|ss(?=\s*(?:#|no\b|nr\b|num))|social(?:[ -]sec(?:urity|\.|\b))?"
             r"|soc\.?\s?sec\.?)"
             r"(?:\s*(?:[:#=.\-]|\b(?:numbers?|num|no|nr|is|was)\b\.?))*\s*)")

# Words that make a valid dotted quad a version when they stand right before it (only filler between:
# "Upgraded the driver to 4.19.0.12", "fixed in 1.0.0.12") or right after it ("the 2.3.1.0 release notes").
# "Update the firmware on 10.0.0.5" has "on" between, which no version takes: that one stays an address.
_RELEASE = (r"versions?|ver|release[sd]?|releasing|builds?|built|firmware|fw|kernel|drivers?|patch(?:ed|es)?"
            r"|hotfix(?:es)?|updat(?:e|es|ed|ing)|upgrad(?:e|es|ed|ing)|downgrad(?:e|es|ed|ing)|bump(?:s|ed)?"
            r"|changelog|sdk|bios|uefi|rom|rev|revision|rc\d*|beta|alpha|nightly|canary|lts|stable|tag(?:s|ged)?"
            r"|install(?:s|ed|ing|er)?|packages?|pkg|librar(?:y|ies)|plugin|dependenc(?:y|ies)|pin(?:s|ned)?"
            r"|ship(?:s|ped|ping)?|edition|compiled|compiler|runtime|toolchain|milestone|rollout|rolled out"
            r"|deprecated|compatible|compatibility|fix(?:es|ed)?|introduced|regression|semver|changes|notes|latest|newest")
_RELEASE_GAP = r"(?:\s*(?:[:#=.\-–(]|\b(?:to|the|a|an|of|in|with|is|was|now|number|no|nr|level|id|or)\b\.?))*\s*"
# "bump X to", "pin X to", "upgrade X to": verbs whose "to" takes a version, with the package named between.
RELEASE_BEFORE = re.compile(rf"(?i)\b(?:{_RELEASE})\b{_RELEASE_GAP}$"
                            r"|(?i:\b(?:bump(?:s|ed)?|pin(?:s|ned)?|upgrad(?:e|es|ed)|downgrad(?:e|es|ed))\s+(?:the\s+)?"
                            r"[\w.-]+\s+to\s*)$")
# After it only punctuation may come between ("2.3.1.0 (release)"): "10.0.0.5 was patched" is an address.
RELEASE_AFTER = re.compile(rf"(?i)[\s(:,-]*(?:\b(?:{_RELEASE})\b|(?:or|and)\s+(?:later|newer|above|higher|up|older|earlier)\b)")
# Structure of a version: "v4.19.0.12", "pkg==1.2.3.4", "name-1.2.3.4" before it; "-beta", "+build", "~ubuntu",
# "_amd64" after it; a product name (a capitalised word, not the first of its sentence) right before it.
VERSION_BEFORE = re.compile(r"(?:\b[vV]|[=<>~!^]=?|[A-Za-z][-_/])\s*$")
VERSION_AFTER = re.compile(r"[-+~_][A-Za-z]")
PRODUCT_BEFORE = re.compile(r"(?<=[a-z0-9,;] )[A-Z][a-z]{2,}\s$")


def _line_before(text: str, start: int, width: int) -> str:
    before = text[max(0, start - width) : start]
    return before[before.rfind("\n") + 1 :]


def _line_after(text: str, end: int, width: int) -> str:
    return text[end : end + width].split("\n", 1)[0]


def is_version(text: str, start: int, end: int) -> bool:
    """A valid dotted quad at text[start:end] reads as a version or build number, not an address."""
    before, after = _line_before(text, start, 48), _line_after(text, end, 32)
    return bool(VERSION_BEFORE.search(before) or VERSION_AFTER.match(after) or RELEASE_BEFORE.search(before)
                or RELEASE_AFTER.match(after) or PRODUCT_BEFORE.search(before))


def phone_label_before(text: str, start: int) -> bool:
    """A phone word right before the number ("Tel.", "call me on", "Phone #")."""
    return bool(PHONE_LABEL_BEFORE.search(_line_before(text, start, 48)))


def identifier_label_before(text: str, start: int) -> bool:
    """An identifier label right before the number ("Tracking number:", "Order #", "ISBN-10", "Ref.")."""
    return bool(ID_LABEL_BEFORE.search(_line_before(text, start, 48))) and not phone_label_before(text, start)


def isbn_named(text: str, start: int, end: int) -> bool:
    """ISBN or a book word on the number's line, shortly before or after it ("ISBN 10: ...", "... (paperback)")."""
    return bool(ISBN_WORD.search(_line_before(text, start, 40)) or ISBN_WORD.search(_line_after(text, end, 24)))


if __name__ == "__main__":
    for line in sys.argv[1:]:
        m = re.search(r"\d[\d.\- ]*\d", line)
        s, e = m.span()
        print(f"{line!r}: version {is_version(line, s, e)}, identifier label {identifier_label_before(line, s)}, "
              f"phone label {phone_label_before(line, s)}, ISBN named {isbn_named(line, s, e)}")
