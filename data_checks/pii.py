"""PII suite: personal data and secrets in any message. Policy per type: reject the row, or redact the value.

    python bench/pii_corpus.py      # recall and look-alike precision per type on a Faker corpus (docs/benchmarks.md)

Types and what makes a match count:

| type | found by | checked with |
|---|---|---|
| EMAIL | address pattern | not a reserved documentation domain (RFC 2606/6761: example.*, .test, .invalid, .localhost) |
| PHONE | libphonenumber's matcher (`phonenumbers`), regions US, GB, DE, FR; +CC numbers of any country, any separators | 9+ digits; not a plain digit run unless it starts with 0; not a date, decimal or ISBN (ISBN-13 check; ISBN-10 check when grouped like one, or plain and not a valid number); not right after an identifier or ISBN label (pii_context) |
| CREDIT_CARD | 13-19 digits, plain or in groups | Luhn checksum, issuer prefix 2-6 (ISBNs start 97x) |
| IBAN | country code, check digits, then 11-30 letters/digits, compact or in groups of 4 | ISO 13616 mod-97 (trailing words are backed off) |
| SSN | US AAA-GG-SSSS, with dashes or spaces; after an SSN label ("SSN", "Social:", "Social Security No.", "SS#") also plain or dotted | area not 000, 666 or 9xx; group, serial not zero |
| IP_ADDRESS | IPv4 dotted quad, IPv6 (full or compressed) | `ipaddress` parses it; not loopback, unspecified, 0.x.x.x, multicast or reserved; an IPv4 not read as a version by its cues (pii_context) |
| API_KEY | detect-secrets' provider patterns (AWS incl. ASIA, GitHub, GitLab, Slack, Stripe, SendGrid, Twilio, ...) plus sk-/sk-proj-/sk-ant-, github_pat_, AIza, hf_ | - |
| SECRET | PEM private key blocks (BEGIN to END); 24+ characters of [A-Za-z0-9+/=_-] with letters and digits | entropy >= 4 bits/char; not a path, not base64 of plain text, not a name built of words and numbers (libfoo-bar-x86_64) |

Names, postal addresses, dates of birth and passport numbers are not detected (README: Data/PII).

Speed: the full patterns are slow on 300 MB of text, so cheap triggers pick the rows first: a
search for '@' and '::', and sliding-window byte counts over the shared buffer: 8+ digits in 16
bytes, digits and dots of an IPv4, colon runs, and 20+ key characters in a row (every known key
is that long). Only rows with a trigger get the full patterns. Details name the type and the
count, never the value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import math
import re
from collections import Counter

import numpy as np
import pandas as pd
import phonenumbers
from detect_secrets.plugins import (aws, azure_storage_key, discord, github_token, gitlab_token, mailchimp,
                                    openai, pypi_token, sendgrid, slack, square_oauth, stripe, telegram_token)

from data_checks import pii_context
from data_checks.text import TextView

TYPES = ("API_KEY", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "PHONE", "IP_ADDRESS", "SECRET")  # report column order
RULES = {f"pii_{t.lower()}": f"no {t.lower().replace('_', ' ')} in any message" for t in TYPES}
# National formats measured in bench/pii_corpus.py. A +number parses the same in any region and one without a
# leading 0 can only be North American here, so US is tried alone for those; 0... and 00... try the others.
PHONE_REGIONS = ("US", "GB", "DE", "FR")

# detect-secrets' provider patterns (its AWS one has ASIA temporary keys too). Left out: its keyword and entropy
# plugins (SECRET below does that), Artifactory/Cloudant/IBM/Softlayer (they need words around them or match
# capitalised words), and its JWT pattern, which ends lazily and leaves the signature behind.
_PROVIDER_PATTERNS = [aws.AWSKeyDetector.denylist[0], *github_token.GitHubTokenDetector.denylist,
                      *gitlab_token.GitLabTokenDetector.denylist, *slack.SlackDetector.denylist,
                      *stripe.StripeDetector.denylist, *sendgrid.SendGridDetector.denylist,
                      *discord.DiscordBotTokenDetector.denylist, *openai.OpenAIDetector.denylist,
                      *pypi_token.PypiTokenDetector.denylist, *square_oauth.SquareOAuthDetector.denylist,
                      *azure_storage_key.AzureStorageKeyDetector.denylist,
                      *mailchimp.MailchimpDetector.denylist, *telegram_token.TelegramBotTokenDetector.denylist]
# Providers it lacks (OpenAI project keys, Anthropic, Google, Hugging Face, fine-grained GitHub) and whole JWTs.
_OWN_KEY_PATTERNS = (r"eyJ[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*|sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}"
                     r"|[rs]k_(?:live|test)_[0-9A-Za-z]{24,}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_-]{20,}"
                     r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z]{30,}|xox[bpasr]-[A-Za-z0-9-]{15,}")
API_KEY = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join([_OWN_KEY_PATTERNS, *(p.pattern for p in _PROVIDER_PATTERNS)])
                     + r")")
PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY((?: BLOCK)?)-----.*?(?:-----END \1PRIVATE KEY\2-----|\Z)", re.S)
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})\b")
RESERVED_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|localhost)$", re.I)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b")
CARD = re.compile(r"(?<![\d.,/-])\d{13,19}(?![\d])|(?<![\d.,/-])\d{4}(?:[ -]\d{3,6}){2,4}(?:[ -]\d{1,2})?(?![\d])")
# Grouped 3-2-4 anywhere; after a label (a tight one, or "SSN"/"social security" up to 20 characters before) any grouping.
SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)(\d{3})([- ])(?!00)\d{2}\2(?!0000)\d{4}(?![\d-])"
                 r"|(?:" + pii_context.SSN_LABEL + r"|(?i:ssn|social security(?: number)?|soc\. ?sec\.)\D{0,20})"
                 r"(?<!\d)((?!000|666|9\d\d)\d{3}[-. ]?(?!00)\d{2}[-. ]?(?!0000)\d{4})(?![\d-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\w)")
COUNTRY_CODE_BEFORE = re.compile(r"(?:\+\d{1,3}|\(\+\d{1,3}\))[\s.-]*$")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# A loose net for phone-like runs; libphonenumber decides. An extension ("x1234", "ext. 12") is part of the number.
PHONE_RUN = re.compile(r"(?<![\w+.])(?:\(?\+|00)?\(?\d[\d ().\-/]{6,22}\d(?:\s?(?:x|ext\.?|#)\s?\d{1,6})?(?![\w])")
DATE = re.compile(r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?:[ T]\d{1,2})?")
ARITHMETIC = re.compile(r"\d\s+[-/]\s+[\d(-]|\s{2,}|\d\.\d+\s*/")  # "123456 - 7890", "120.50 / 10.5"
SSN_SHAPE = re.compile(r"\d{3}[- ]\d{2}[- ]\d{4}")
NANP_PLAIN = re.compile(r"[2-9]\d\d[2-9]\d{6}")
ARITHMETIC_BEFORE = re.compile(r"\d\s*(?:[×*+/-]\s*\d|=)")
ARITHMETIC_AROUND = (re.compile(r"[=*+/×-]\s*$"), re.compile(r"\s*[=*+/×-]\s*\d"))
AREA_CODE_BRACKETS = re.compile(r"1?[ .-]?\(\d{3}\)")
US_NUMBER = re.compile(r"(?:1[-. ]?)?(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}")
ISBN10_GROUPED = re.compile(r"\d{1,5}([- ])\d{1,7}\1\d{1,7}\1[\dX]")  # group, publisher, title, check digit
URL_BEFORE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*$|;base64,$")  # a URL's path; a data: URI's payload
CASE_OR_DIGIT_SWITCH = re.compile(r"[a-z](?=[A-Z])|[A-Za-z](?=\d)|\d(?=[A-Za-z])")
NAME_SHAPE = re.compile(r"[A-Za-z0-9]+(?:[-_+]+[A-Za-z0-9]+)+")
WORD_PIECE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")  # "libQt5WebEngine" -> lib Qt 5 Web Engine
VOWEL = re.compile(r"[aeiouyAEIOUY]")
SECRET = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{24,}(?![A-Za-z0-9+/=_-])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def isbn_ok(digits: str) -> bool:
    """An ISBN-13 (978/979) check digit holds: such a number is a book, not a phone or card. (ISBN-10's check
    passes for 1 in 11 random numbers, so a 10-digit one counts only after the word ISBN: see _phones.)"""
    return len(digits) == 13 and digits[:3] in ("978", "979") and sum(
        int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0


def isbn10_ok(chars: str) -> bool:
    """An ISBN-10 check digit holds (weights 10 down to 1, X for ten, sum divisible by 11)."""
    if len(chars) != 10 or not chars[:9].isdigit() or not (chars[9].isdigit() or chars[9] == "X"):
        return False
    return sum((10 - i) * (10 if c == "X" else int(c)) for i, c in enumerate(chars)) % 11 == 0


def _entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _is_plain_base64_text(token: str) -> bool:
    """Base64 that decodes to printable text is encoded prose, not a key."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_" if "-" in token or "_" in token else None,
                               validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return len(text) >= 8 and sum(c.isprintable() or c in "\n\t" for c in text) / len(text) > 0.95


@functools.cache
def _random_entropy(length: int, symbols: int = 64) -> float:
    """Expected entropy (bits/char) of `length` characters drawn uniformly from `symbols`: each symbol's count
    is binomial (length, 1/symbols); probabilities in log space, so long tokens do not overflow a float."""
    log_p, log_q = -math.log(symbols), math.log1p(-1 / symbols)

    def chance(c: int) -> float:
        return math.exp(math.lgamma(length + 1) - math.lgamma(c + 1) - math.lgamma(length - c + 1)
                        + c * log_p + (length - c) * log_q)

    return -symbols * sum(chance(c) * c / length * math.log2(c / length) for c in range(1, length + 1))


def _is_word_built_name(token: str) -> bool:
    """A name made of words and numbers between separators ("libQt5WebEngineCore-x86_64-linux-gnu",
    "registry-k8s-io-kube-apiserver-v1-28-3-amd64"), not a random token that happens to hold a '-' or '_'.

    All three must hold: at most 40% (or at least 90%) of its letters are capitals, where random letters are
    half capitals; 70% of its characters sit in numbers or in words of 3+ letters with a vowel, once split at
    separators and case/digit switches (random characters mostly fall into pieces of 1-2); and its words
    repeat letters, so its entropy is 0.1+ bits/char under a random token's of the same length. Random tokens
    with a '-' or '_' pass all three about 1 time in 400 at 24 characters, 1 in 3,000 at 40 (tests/test_pii_context.py).
    """
    if not NAME_SHAPE.fullmatch(token):
        return False  # a name has no '/' or '=' (base64 of random bytes mostly has one)
    letters = [c for c in token if c.isalpha()]
    capitals = sum(c.isupper() for c in letters) / max(1, len(letters))
    if 0.4 < capitals < 0.9:
        return False  # names are lower-case or Capitalised words, or all capitals; random letters are half capitals
    pieces = WORD_PIECE.findall(token)
    in_words = sum(len(q) for q in pieces if q.isdigit() or len(q) >= 3 and VOWEL.search(q))
    return in_words >= 0.7 * sum(map(len, pieces)) and _entropy(token) < _random_entropy(len(token)) - 0.1


def _secret_ok(value: str, before: str) -> bool:
    entropy = _entropy(value)
    # Without digits only a very mixed token counts: long words and CamelCase names stay near 4 bits/char.
    if not any(c.isalpha() for c in value) or entropy < (4.0 if any(c.isdigit() for c in value) else 4.5):
        return False
    if before.endswith(";base64,"):
        return False
    if "/" in value:
        parts = [p for p in value.split("/") if p]
        names = len(parts) >= 2 and all(len(CASE_OR_DIGIT_SWITCH.findall(p)) <= 2 for p in parts)
        if names or URL_BEFORE.search(before):
            return False  # a file path or a URL: names between slashes (random base64 switches case all the time)
    return not _is_word_built_name(value) and not _is_plain_base64_text(value)


# Issuer prefixes by length (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay, Maestro): a random
# digit run passes Luhn 1 time in 10, and these cut that further.
NO_MATCH = re.compile(r"(?!)")
CARD_ISSUER = {13: re.compile(r"4"), 14: re.compile(r"3[0689]"), 15: re.compile(r"3[47]|2131|1800"),
               16: re.compile(r"4|5[1-5]|2[2-7]|6(?:011|5|4[4-9]|2)|35"),
               **{n: re.compile(r"4|5[06-8]|6|35") for n in (17, 18, 19)}}


def _cards(text: str):
    for m in CARD.finditer(text):
        groups = re.split(r"[ -]", m.group())
        # Back off trailing groups: "4111 1111 1111 1111 12/28" ends in an expiry month.
        for k in range(len(groups), 0, -1):
            digits = "".join(groups[:k])
            end = m.start() + len(" ".join(groups[:k]))
            if CARD_ISSUER.get(len(digits), NO_MATCH).match(digits) and luhn_ok(digits) and not isbn_ok(digits):
                if not _in_arithmetic(text, m.start(), end):
                    yield m.start(), end, "CREDIT_CARD"
                break


def _ibans(text: str):
    for m in IBAN.finditer(text):
        value = m.group()
        groups = value.split(" ")
        # Back off trailing words ("... 00 BIC COBADEFF"); a compact one may have a word glued on ("...3000BIC").
        tries = [" ".join(groups[:k]) for k in range(len(groups), 0, -1)] + [value.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")]
        for t in tries:
            if iban_ok(t):
                yield m.start(), m.start() + len(t), "IBAN"
                break


def _ips(text: str):
    for pattern in (IPV4, IPV6):
        for m in pattern.finditer(text):
            try:
                ip = ipaddress.ip_address(m.group())
            except ValueError:
                continue
            if ip.is_loopback or ip.is_unspecified:
                continue
            if ip.version == 4 and (ip.is_multicast or ip.is_reserved or m.group().startswith("0.")):
                continue  # no one's host: 224/4, 240/4 (netmasks such as 255.255.255.0), 0/8 ("this network")
            if ip.version == 4 and pii_context.is_version(text, m.start(), m.end()):
                continue  # "firmware 1.0.0.12", "the 2.3.1.0 release"
            if ip.version == 4 and COUNTRY_CODE_BEFORE.search(text, max(0, m.start() - 8), m.start()):
                continue  # "+46 8.12.60.90": a phone number's digits, which the phone finder takes
            if ip.version == 6 and not any(c.isdigit() or c in "abcdefABCDEF" for c in m.group()):
                continue
            yield m.start(), m.end(), "IP_ADDRESS"


def _phone_ok(raw: str) -> bool:
    number = re.split(r"\s?(?:x|ext\.?|#)\s?\d", raw)[0]
    digits = re.sub(r"\D", "", number)
    if len(digits) < 9 or SSN_SHAPE.fullmatch(number) or isbn_ok(digits) or ARITHMETIC.search(number):
        return False
    if number.count("(") != number.count(")") or DATE.fullmatch(number.strip()):
        return False  # a bracket of the sentence; a date, maybe with the hour
    if number.lstrip("(").startswith("+"):
        # The country code fixes how the digits read, so any grouping counts ("+1.415.555.0123",
        # "+33.1.23.45.67.89", "+49-30-987654-32"); a signed decimal does not.
        return not re.fullmatch(r"\+\d+\.\d+", number)
    groups = re.findall(r"\d+", number.replace("(0)", " "))
    if len(groups) > 1 and max(map(len, groups[:-1])) > 5 or sum(len(g) == 1 for g in groups[1:]) > 1:
        return False  # "355909190063-746", "1 2 3 4 5 6 7 8 9": arithmetic, ids or grids, not phones
    if not number.startswith(("0", "(0")) and not (US_NUMBER.fullmatch(number) or NANP_PLAIN.fullmatch(number)):
        return False  # no + and no trunk 0: only the North American shape (1-)AAA-EEE-NNNN; other digit runs are ids
    dots = number.split(".")  # "1.415.555.0123": North America's leading 1 may stand alone
    return len(dots) == 1 or (len(dots) >= 3 and all(len(re.sub(r"\D", "", p)) >= 2 for p in dots[dots[0] == "1":]))


def _is_isbn10(text: str, start: int, end: int) -> bool:
    """text[start:end] (maybe with an X check digit after it) is an ISBN-10 grouped like one ("0-306-40615-2")."""
    value = text[start:end]
    if text[end : end + 2] in ("-X", " X"):
        value += text[end : end + 2]
    return bool(ISBN10_GROUPED.fullmatch(value)) and isbn10_ok(re.sub(r"[- ]", "", value))


def _in_arithmetic(text: str, s: int, e: int) -> bool:
    """An operand or a result: "= 5551234567", "4111111111111111 * 3"; for a plain digit run also a sum shortly
    before it ("512088 x 137872 is 7060240473")."""
    if ARITHMETIC_AROUND[0].search(text, max(0, s - 3), s) or ARITHMETIC_AROUND[1].match(text, e, e + 4):
        return True
    return text[s:e].isdigit() and bool(ARITHMETIC_BEFORE.search(text, max(0, s - 40), s))


def _labelled_not_phone(text: str, start: int, end: int) -> bool:
    """An identifier or ISBN label says what the number is ("Tracking #", "ISBN 10:"), unless a phone word is nearer
    or the number is written as only phones are: a country code, or an area code in brackets ("(555) 201-9865")."""
    if text[start] == "+" or AREA_CODE_BRACKETS.match(text, start) or pii_context.phone_label_before(text, start):
        return False
    return pii_context.identifier_label_before(text, start) or pii_context.isbn_named(text, start, end)


def _phones(text: str, claimed: list[tuple[int, int, str]]):
    for run in PHONE_RUN.finditer(text):
        start, value = run.start(), run.group()
        if any(start < e and s < run.end() for s, e, _ in claimed) or sum(c.isdigit() for c in value) < 9:
            continue  # a card, IBAN, SSN or address found already, or too short: libphonenumber's parse is the slow part
        if value.startswith("(") and value.count("(") > value.count(")"):
            start, value = start + 1, value[1:]  # "(call 0191 498 0294)": the bracket belongs to the sentence
        if _labelled_not_phone(text, start, run.end()) or _is_isbn10(text, start, run.end()):
            continue
        # A plain ten digits with a valid ISBN-10 check digit (1 phone in 11 has one) counts only as a valid number.
        book = value.isdigit() and isbn10_ok(value)
        found = None
        trunk_or_idd = value.lstrip("(").startswith("0")  # 0... national, 00... international: not US dialling
        for region in PHONE_REGIONS[1:] if trunk_or_idd else PHONE_REGIONS[:1]:
            for m in phonenumbers.PhoneNumberMatcher(value, region, leniency=phonenumbers.Leniency.POSSIBLE):
                s, e = start + m.start, start + m.end
                inside = any(c.isdigit() for c in value[: m.start])  # a piece of a longer digit run
                if _phone_ok(m.raw_string) and not inside and not (s and text[s - 1] in ".,") and \
                        not _in_arithmetic(text, s, e) and not (book and not phonenumbers.is_valid_number(m.number)):
                    found = (s, e)
                    break
            if found:
                break
        if found:
            yield found[0], found[1], "PHONE"


def _finds(text: str, claimed: list[tuple[int, int, str]]):
    """Candidate spans in priority order: an earlier span claims its characters (find_pii fills `claimed`)."""
    for m in PEM.finditer(text):
        yield m.start(), m.end(), "SECRET"
    for m in API_KEY.finditer(text):
        yield m.start(), m.end(), "API_KEY"
    for m in EMAIL.finditer(text):
        if not RESERVED_DOMAIN.search(m.group(1)):
            yield m.start(), m.end(), "EMAIL"
    yield from _ibans(text)
    yield from _cards(text)
    for m in SSN.finditer(text):
        s, e = m.span(3) if m.group(3) else m.span()
        yield s, e, "SSN"
    yield from _ips(text)  # before phones: 192.168.100.200 is a possible phone number too
    yield from _phones(text, claimed)
    for m in SECRET.finditer(text):
        if _secret_ok(m.group(), text[max(0, m.start() - 200) : m.start()]):
            yield m.start(), m.end(), "SECRET"


def find_pii(text: str, kinds=TYPES) -> list[tuple[int, int, str]]:
    """(start, end, type) of every validated PII value; a span claimed by an earlier finder is not re-used."""
    spans: list[tuple[int, int, str]] = []
    for s, e, kind in _finds(text, spans):
        if not any(s < pe and ps < e for ps, pe, _ in spans):
            spans.append((s, e, kind))
    return sorted(sp for sp in spans if sp[2] in kinds)


def redact(text: str, kinds=TYPES) -> str:
    """Replace each PII value of the given types with a typed placeholder such as <EMAIL>."""
    for s, e, kind in reversed(find_pii(text, kinds)):
        text = text[:s] + f"<{kind}>" + text[e:]
    return text


def redact_value(value, kinds=TYPES):
    """Redact every string inside a JSON-like value (dicts, lists), keeping its structure valid."""
    if isinstance(value, str):
        return redact(value, kinds) if value else value
    if isinstance(value, dict):
        return {k: redact_value(v, kinds) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, kinds) for v in value]
    return value


# Byte weights summed over sliding windows with one cumulative sum each (counts wrap mod 2**8 / 2**16 harmlessly).
# Low 5 bits count digits (up to 16), high 3 bits dots (mod 8), in 16-byte windows: "+46 (8) 12 21 90"
# spreads its 9 digits over 15 bytes.
_DIGIT_DOT = np.zeros(256, dtype=np.uint8)
_DIGIT_DOT[ord("0"):ord("9") + 1] = 1
_DIGIT_DOT[ord(".")] = 32
_TOKEN_COLON = np.zeros(256, dtype=np.uint16)  # low 6 bits count key/token characters, the rest colons (20 bytes)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/=_-":
    _TOKEN_COLON[_c] = 1
_TOKEN_COLON[ord(":")] = 64


def _window_sums(weights: np.ndarray, width: int) -> np.ndarray:
    """Element i: the sum of weights[i : i + width]."""
    sums = np.zeros(len(weights) + 1, dtype=weights.dtype)
    np.cumsum(weights, dtype=weights.dtype, out=sums[1:])
    return sums[width:] - sums[:-width]


_sums = np.arange(256)
_DIGIT_DOT_HIT = ((_sums & 31) >= 8) | (((_sums >> 5) >= 3) & ((_sums & 31) >= 4))  # 8+ digits; or an IPv4
_sums = np.arange(65536)
# 20 key characters in a row; or 4+ colons in 20 bytes (a full-form IPv6 has 4 there)
_TOKEN_COLON_HIT = ((_sums & 63) == 20) | ((_sums >> 6) >= 4)


def candidate_rows(view: TextView, chunk_bytes: int = 1 << 20) -> np.ndarray:
    """Rows that may hold PII: a superset of the rows any full pattern can match."""
    raw = view.buf.base if isinstance(view.buf.base, bytes) else view.buf.tobytes()
    hits = []
    for needle in (b"@", b"::"):  # key prefixes need no search: every known key is 20+ token characters
        at = raw.find(needle)
        while at >= 0:
            hits.append(at)
            at = raw.find(needle, at + 1)
    found = [np.array(hits, dtype=np.int64)]
    for lo in range(0, len(view.buf), chunk_bytes):
        part = view.buf[lo : lo + chunk_bytes + 24]
        found.append(lo + np.flatnonzero(_DIGIT_DOT_HIT[_window_sums(_DIGIT_DOT[part], 16)]))
        found.append(lo + np.flatnonzero(_TOKEN_COLON_HIT[_window_sums(_TOKEN_COLON[part], 20)]))
    positions = np.concatenate(found)
    return np.unique(view.row_of(positions)) if len(positions) else np.zeros(0, np.int64)


def detect(records: list[dict], view: TextView | None = None, scanned_at_ingest: bool = False
           ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Flag rows per PII type. Details name the type and how many values, never the value.

    A record that ingest already redacted carries `pii_redacted` ({type: count}); those count as found.
    With `scanned_at_ingest` (every record came through ingest's redact_records) only those counts are
    read: the text holds placeholders where the values were, so a second scan would find nothing.
    """
    n = len(records)
    flags = {t: np.zeros(n, dtype=bool) for t in TYPES}
    details: list[dict[str, str]] = [{} for _ in range(n)]
    found = {}
    if not scanned_at_ingest:
        view = view or TextView.of(records)
        found = {int(i): Counter(k for _, _, k in find_pii(view.texts[i])) for i in candidate_rows(view)}
    for i, rec in enumerate(records):
        if rec.get("pii_redacted"):
            found[i] = found.get(i, Counter()) + Counter(rec["pii_redacted"])
    for i, counts in found.items():
        for kind, count in counts.items():
            flags[kind][i] = True
            details[i][f"pii_{kind.lower()}"] = f"contains {count} {kind.lower().replace('_', ' ')} value(s)"
    return pd.DataFrame({f"pii_{t.lower()}": flags[t] for t in TYPES}), details


def redact_records(records: list[dict], view: TextView | None = None) -> list[dict]:
    """Records with every PII value redacted (all types) and `pii_redacted` = {type: count} on the rows that had any.

    Ingest runs this before it writes its copy, so no folder the pipeline writes holds a raw value; the
    validate stage reads the counts back (`detect`) and applies each type's policy to them.
    """
    view = view or TextView.of(records)
    out = list(records)
    for i in candidate_rows(view):
        found = Counter(k for _, _, k in find_pii(view.texts[i]))
        if found:
            rec = records[i]
            out[i] = {**{k: v if k in ("id", "source") else redact_value(v) for k, v in rec.items()},
                      "pii_redacted": dict(found + Counter(rec.get("pii_redacted") or {}))}
    return out
