"""Benchmark: PII and secrets recall per type, and look-alikes flagged, on a Faker corpus in four locales.

    python bench/pii_corpus.py              # writes the "PII and secrets" section of docs/benchmarks.md
    python bench/pii_corpus.py --no-write   # print only
    python bench/pii_corpus.py --baseline /tmp/main   # also measure another checkout's detector (e.g. main)

The corpus is generated here, fresh from each seed (Faker en_US, en_GB, de_DE, fr_FR): each planted value
sits in a sentence, as a user message with an assistant reply. Families of hard look-alikes (reserved
e-mail domains, loopback addresses, base64 of text, file paths, version strings, ISBNs, long
decimals, arithmetic, hashes, dates) and clean Q/A rows must not be flagged. Issue 23 added the forms a
held-out corpus showed missing (SSNs after a label in any grouping, +CC phones with dots, brackets, 00)
and four look-alike families, each drawn as many phrasings: IP-shaped versions in prose, library and
package names, labelled tracking and order numbers, ISBN-10/13 in any form.

Measured for the current detector (data_checks/pii.py), for the previous one (bench/pii_previous.py) and,
with --baseline, for another checkout's:
- reject: `pii.detect` flags the row with the planted type (the validate stage's path);
- redact: `pii.redact_records` (what ingest writes) turns the row into exactly the sentence with a typed
  placeholder in place of the value: no tail, nothing else touched;
- look-alikes and clean rows: share of rows flagged with any type.
Prints no planted value: only counts.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu, write_section  # noqa: E402

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR")
TEMPLATES = ["Please reach me at {v}.", "{v} is the one on the form", "My details:\n{v}\nThanks!",
             "Noted ({v}), I will follow up.", 'The value was "{v}", is that right?', "Use {v}, then restart."]
CARDS = ("visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb16", "jcb15")  # maestro is 12


def _group(digits: str, sizes) -> list[str]:
    out, at = [], 0
    for n in sizes:
        out.append(digits[at:at + n])
        at += n
    if at < len(digits):
        out.append(digits[at:])
    return [g for g in out if g]


def positives(fakers: list, n: int) -> list[tuple[str, str, str, str]]:
    """(type, value, text before, text after) for n values of each claimed type; the text around stays."""
    f0 = fakers[0]
    rnd = f0.random
    alnum, upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def rs(chars, k):
        return "".join(rnd.choice(chars) for _ in range(k))

    out = []
    for i in range(n):
        f = fakers[i % len(fakers)]
        out.append(("EMAIL", [f.free_email(), f.company_email(), f"{f.user_name()}@{f.domain_name()}"][i % 3], "", ""))
        out.append(("PHONE", f.phone_number(), "", ""))
        digits = f0.credit_card_number(CARDS[i % len(CARDS)])
        sizes = {15: (4, 6, 5), 14: (4, 6, 4)}.get(len(digits), (4,) * 5)
        sep = [" ", "-", ""][i % 3]
        card = sep.join(_group(digits, sizes)) if sep else digits
        out.append(("CREDIT_CARD", card, "", f" {f0.credit_card_expire()}" if i % 4 == 0 else ""))
        iban = fakers[i % 4 if i % 4 != 0 else 1].iban()
        spaced = " ".join(_group(iban, (4,) * 9)) if i % 2 else iban
        out.append(("IBAN", spaced, "", f" BIC {f.swift()}" if i % 3 == 0 else ""))
        ssn = f0.ssn()
        form = i % 3
        out.append(("SSN", ssn if form == 0 else ssn.replace("-", " ") if form == 1 else ssn.replace("-", ""),
                    "SSN " if form == 2 else "", ""))
        ip = [f.ipv4_public(), f.ipv4_private(), f.ipv6(), ipaddress.ip_address(f.ipv6()).exploded,
              ipaddress.ip_address(f.ipv6()).compressed][i % 5]
        out.append(("IP_ADDRESS", ip, "", ""))
        key = [lambda: rnd.choice(["AKIA", "ASIA"]) + rs(upper, 16), lambda: "ghp_" + rs(alnum, 36),
               lambda: "github_pat_" + rs(alnum, 22) + "_" + rs(alnum, 59), lambda: "glpat-" + rs(alnum, 20),
               lambda: f"xoxb-{rs('0123456789', 11)}-{rs('0123456789', 12)}-{rs(alnum, 24)}",
               lambda: "sk_live_" + rs(alnum, 24), lambda: f"SG.{rs(alnum, 22)}.{rs(alnum, 43)}",
               lambda: "sk-proj-" + rs(alnum + "_-", 48), lambda: "sk-ant-api03-" + rs(alnum + "_-", 93),
               lambda: "AIza" + rs(alnum + "_-", 35), lambda: "hf_" + rs(alnum[:52], 34),
               lambda: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + base64.urlsafe_b64encode(
                   f'{{"sub":"{rs(alnum, 10)}","iat":{rnd.randint(10**9, 2 * 10**9)}}}'.encode()).decode().rstrip("=")
               + "." + rs(alnum + "_-", 43)][i % 12]()
        out.append(("API_KEY", key, "", ""))
        kind = ["RSA ", "EC ", "OPENSSH ", ""][i % 4]
        body = base64.b64encode(f0.binary(length=rnd.randint(90, 400))).decode()
        pem = (f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(body[j:j + 64] for j in range(0, len(body), 64))
               + f"\n-----END {kind}PRIVATE KEY-----")
        token = [pem, base64.b64encode(f0.binary(length=rnd.randint(18, 48))).decode(),
                 f0.password(length=32, special_chars=False), rs(alnum + "-_", 40)][i % 4]
        out.append(("SECRET", token, "", ""))
    return out


def lookalikes(fakers: list, n: int) -> list[tuple[str, str]]:
    """(family, text) for n look-alikes of each family."""
    f0 = fakers[0]
    rnd = f0.random
    out = []
    for i in range(n):
        f = fakers[i % len(fakers)]
        user = f.user_name()
        out.append(("reserved e-mail domains", [f.safe_email(), f"{user}@{f.word()}.test", f"{user}@host.invalid",
                                               f"{user}@corp.example.com", f"{user}@dev.localhost"][i % 5]))
        out.append(("loopback / unspecified IP", [f"127.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}",
                                                  "0.0.0.0", "::1", "::", "0:0:0:0:0:0:0:1"][i % 5]))
        out.append(("base64 of text", base64.b64encode(f.sentence(nb_words=8 + i % 10).encode()).decode()))
        out.append(("file paths", [f0.file_path(depth=3 + i % 4), f"/home/{user}/src/{f0.word()}_v{i % 9}/main{i}.py",
                                   f"C:\\Users\\{user}\\Documents\\report_{2000 + i}.docx",
                                   f"/var/log/app/{2020 + i % 5}/{1 + i % 12:02d}/server-{i % 30:02d}.log",
                                   f"https://{f.domain_name()}/blog/{2020 + i % 5}/{f0.slug()}-{f0.slug()}/"][i % 5]))
        v = ".".join(str(rnd.randint(0, 20)) for _ in range(4))
        out.append(("version strings", [f"version {v}", f"v{v}", f"Release {v}", f"build 10.0.{19000 + i}.{i % 2000}",
                                        f"pip install pkg=={v}"][i % 5]))
        out.append(("ISBNs", [f"ISBN {f0.isbn13()}", f"ISBN {f0.isbn13().replace('-', '')}",
                              f"ISBN-10: {f0.isbn10()}"][i % 3]))
        out.append(("long decimals", [f"{rnd.random() * 10 ** rnd.randint(0, 6):.15f}", f"0.{rnd.getrandbits(60)}",
                                      f"{rnd.randint(1, 9)}.{rnd.getrandbits(64)}"][i % 3]))
        a, b = rnd.randint(10**5, 10**9), rnd.randint(10**5, 10**9)
        out.append(("arithmetic", [f"{a} * {b} = {a * b}", f"{a} + {b} = {a + b}", f"{a} - {b}", f"{a} / {b}",
                                   f"{a}*{b}={a * b}"][i % 5]))
        out.append(("hashes and UUIDs", [f0.sha256(), f0.sha1(), f0.md5(), f0.uuid4()][i % 4]))
        out.append(("dates and times", [f0.date_time().isoformat(), f0.date(), f0.date_time().strftime("%m/%d/%Y %H:%M"),
                                        f0.date_time().strftime("%d.%m.%Y %H:%M:%S")][i % 4]))
    return out


# Issue 23: forms the detector missed on a held-out corpus, and look-alikes it flagged, each as a family of phrasings.
SSN_LABELS = ("Social: ", "Social ", "SSN: ", "SSN#", "SSN # ", "SS# ", "SS#", "SS No. ", "Social Security No. ",
              "Social Security Number: ", "social security #", "Soc. Sec. ", "Soc Sec #: ", "my SSN is ", "Social sec. no. ")
ABROAD = ("GB", "DE", "FR", "ES", "IT", "NL", "CH", "IE", "SE", "PL", "AU", "IN", "JP", "BR", "MX", "ZA", "KR", "CN")


def _phone_forms(cc: str, groups: list[str], trunk: bool) -> list[str]:
    """One number written the ways people write +CC numbers: dots, hyphens, spaces, brackets, 00, compact."""
    rest = " ".join(groups[1:])
    forms = [f"+{cc} {' '.join(groups)}", f"+{cc}.{'.'.join(groups)}", f"+{cc}-{'-'.join(groups)}",
             f"+{cc} ({groups[0]}) {rest}", f"(+{cc}) {' '.join(groups)}", f"+{cc}{''.join(groups)}",
             f"00{cc} {' '.join(groups)}", f"+{cc} {'.'.join(groups)}", f"+{cc}.({groups[0]}).{'.'.join(groups[1:])}"]
    if trunk:
        forms.append(f"+{cc} (0){groups[0]} {rest}")
    return forms


def issue23_positives(fakers: list, n: int) -> list[tuple[str, str, str, str, str]]:
    """(type, value, label before it, text after, form) for n SSNs after a label and n +CC phones."""
    import phonenumbers

    f0 = fakers[0]
    rnd = f0.random
    out = []
    for i in range(n):
        ssn = f0.ssn()
        digits = ssn.replace("-", "")
        value = [digits, ssn, ssn.replace("-", " "), ssn.replace("-", ".")][i % 4]
        out.append(("SSN", value, SSN_LABELS[i % len(SSN_LABELS)], "", "SSN after a label, any grouping"))
        if i % 2:  # North America: area and exchange 2-9xx, the line random
            groups = [f"{rnd.randint(2, 9)}{rnd.randint(0, 99):02d}", f"{rnd.randint(2, 9)}{rnd.randint(0, 99):02d}",
                      f"{rnd.randint(0, 9999):04d}"]
            forms = _phone_forms("1", groups, trunk=False) + [f"1.{'.'.join(groups)}", f"+1 ({groups[0]}) {groups[1]}-{groups[2]}"]
            value = forms[(i // 2) % len(forms)] + ["", f" x{rnd.randint(10, 9999)}", f" ext. {rnd.randint(1, 99)}"][i % 3 // 2]
        else:  # another country: its example number with the last four digits drawn, grouped as it groups them
            region = ABROAD[(i // 2) % len(ABROAD)]
            number = phonenumbers.example_number_for_type(region, [phonenumbers.PhoneNumberType.FIXED_LINE,
                                                                   phonenumbers.PhoneNumberType.MOBILE][i % 4 // 2])
            national = str(number.national_number)
            number.national_number = int(national[:-4] + f"{rnd.randint(0, 9999):04d}")
            cc, *groups = re.split(r"[ -]", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))
            meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
            forms = _phone_forms(cc[1:], groups, trunk=meta.national_prefix == "0")
            value = forms[(i // 2 // len(ABROAD)) % len(forms)]
        out.append(("PHONE", value, "", "", "PHONE +CC: dots, hyphens, brackets, 00, compact"))
    return out


def _isbn10(f) -> str:
    return f.isbn10().replace("-", "")


def issue23_lookalikes(fakers: list, n: int) -> list[tuple[str, str]]:
    """(family, text) for n look-alikes of each issue-23 family."""
    f0 = fakers[0]
    rnd = f0.random

    def quad(valid_ip: bool = True) -> str:  # a build number a valid IPv4 could be; or not (a part over 255)
        parts = [rnd.randint(1, 20), rnd.randint(0, 30), rnd.randint(0, 30), rnd.randint(0, 255)]
        if not valid_ip:
            parts[rnd.randint(1, 3)] = rnd.randint(256, 40000)
        return ".".join(map(str, parts))

    def word() -> str:
        return f0.word().lower()

    out = []
    for i in range(n):
        v, product, w1, w2, w3 = quad(i % 7 != 6), word().capitalize(), word(), word(), word()
        out.append(("IP-shaped versions in prose", [
            f"build {v}", f"Build {v} is rolling out to everyone this week.", f"We are on v{v} now.", f"V{v} fixed it",
            f"release {v}", f"the {v} release", f"The {v} release notes list it.", f"firmware {v}",
            f"Firmware: {v}", f"Flash the firmware to {v} first.", f"kernel {v}-generic", f"Upgraded the driver to {v} yesterday.",
            f"Fixed in {v}.", f"patch {v} is out", f"hotfix {v}", f"I bumped {w1} to {v}.", f"Running {product} {v} here.",
            f"pip install {w1}=={v}", f"{w1}-{v}.tar.gz", f"{v}-beta{rnd.randint(1, 9)}", f"{v}-rc{rnd.randint(1, 5)}",
            f"{v}+build{rnd.randint(1, 999)}", f"installed {v} on my laptop", f"SDK {v} needs a rebuild",
            f"BIOS {v}", f"rev. {v}", f"Tagged {v} on main.", f"compatible with {v} and later",
            f"{w1} {v} shipped with the fix"][i % 29]))
        arch = ["x86_64", "amd64", "arm64", "aarch64", "i686", "x64", "win32", "armv7l"][i % 8]
        ver = [f"{rnd.randint(0, 9)}.{rnd.randint(0, 40)}.{rnd.randint(0, 20)}", f"{rnd.randint(0, 9)}_{rnd.randint(0, 90)}"][i % 2]
        camel = f"{w1.capitalize()}{rnd.randint(2, 6)}{w2.capitalize()}{w3.capitalize()}"
        out.append(("library and package names", [
            f"lib{w1}-{w2}-{w3}-{arch}-linux-gnu.so.{rnd.randint(0, 9)}", f"lib{camel}-{arch}-linux-gnu.so",
            f"{w1.capitalize()}-{w2.capitalize()}-{w3.capitalize()}-{arch}-{rnd.randint(10, 99)}-0-{rnd.randint(1000, 29999)}.dll",
            f"lib{w1}_{w2}-mt-{arch}-{rnd.randint(1, 3)}_{rnd.randint(60, 90)}.dylib",
            f"{w1}_{w2}-{ver}-py3-none-manylinux2014_{arch}.whl", f"{w1}-{w2}-{ver}-{arch}.rpm",
            f"{w1}-{w2}_{ver}-1ubuntu{rnd.randint(1, 4)}_{arch}.deb",
            f"ghcr.io/{w1}/{w2}-{w3}:{ver}-alpine{rnd.randint(3, 3)}.{rnd.randint(15, 20)}-{arch}",
            f"{w1}-{w2}-{w3}-deployment-{f0.hexify('^^^^^^^^^')}-{f0.lexify('?????')}",
            f"registry-{w1}-io-{w2}-{w3}-v{rnd.randint(1, 3)}-{rnd.randint(10, 30)}-{rnd.randint(0, 9)}-{arch}",
            f"vcruntime{rnd.randint(100, 150)}_{rnd.randint(1, 3)}-{arch}-release-{w1}.dll",
            f"Load lib{camel}-{w1}-{arch}.so before {w2}."][i % 12]))
        ten = [f"{rnd.randint(2, 9)}{rnd.randint(0, 99):02d}{rnd.randint(2, 9)}{rnd.randint(0, 999999):06d}",
               f"0{rnd.randint(100000000, 999999999)}", f"{rnd.randint(1000000000, 9999999999)}"][i % 3]
        label = ["Tracking number: ", "Tracking #", "tracking no. ", "Your parcel's tracking number is ", "Order #",
                 "Order number ", "order no. ", "Invoice ", "Invoice no. ", "Ref: ", "Reference number ", "Booking ref ",
                 "Confirmation code ", "Case #", "Ticket ", "Account number ", "Customer ID ", "Member no. ",
                 "Policy number ", "Claim no. ", "Serial number ", "SKU ", "Transaction ID ", "Shipment ", "Waybill ",
                 "AWB ", "PO ", "Receipt #", "Parcel ", "DHL waybill no. "][i % 30]
        grouped = ten if i % 4 else f"{ten[:3]}-{ten[3:6]}-{ten[6:]}"
        out.append(("labelled tracking and order numbers", [f"{label}{grouped}", f"{label}{grouped}, thanks!",
                                                            f"Hi, {label.lower()}{grouped} has not arrived."][i % 3]))
        isbn10 = f0.isbn10()
        isbn13 = f0.isbn13()
        out.append(("ISBN-10 and ISBN-13 in any form", [
            f"ISBN 10: {isbn10}", f"ISBN-10 {isbn10.replace('-', '')}", f"isbn no. {isbn10.replace('-', '')}",
            f"ISBN10 {isbn10.replace('-', ' ')}", f"The book ({isbn10}) is good.", f"{isbn10.replace('-', '')} (paperback)",
            f"see {isbn10}", f"Order it by {isbn10}.", f"ISBN-13: {isbn13.replace('-', ' ')}", f"{isbn13.replace('-', '')}",
            f"The ISBN is {isbn10.replace('-', '')}.", f"hardcover edition {isbn10.replace('-', '')}"][i % 12]))
    return out


def clean_rows(fakers: list, n: int) -> list[tuple[str, str]]:
    rnd = fakers[0].random
    rows = []
    for i in range(n):
        f = fakers[i % len(fakers)]
        q = f.sentence(nb_words=10) .rstrip(".") + "?"
        a = f.paragraph(nb_sentences=3)
        if i % 3 == 0:
            a += f" In {rnd.randint(1900, 2030)} it cost {rnd.randint(1, 99999)} euros, about {rnd.random() * 100:.2f} per unit."
        rows.append((q, a))
    return rows


def planted_text(k: int, planted: tuple, redacted: bool = False) -> str:
    """The value in one of the sentences, with its label (`before`) right before it."""
    kind, value, before, after = planted[:4]
    return TEMPLATES[k % len(TEMPLATES)].format(v=before + (f"<{kind}>" if redacted else value) + after)


def record(i: int, user: str, assistant: str = "Thanks, noted.") -> dict:
    return {"id": f"c-{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "source": {"file": "corpus.jsonl", "line": i + 1}}


def measure(module, pos, looks, clean) -> dict:
    """Recall per type (reject and redact), look-alikes flagged per family, clean rows flagged."""
    texts = [(planted_text(k, p), planted_text(k, p, redacted=True)) for k, p in enumerate(pos)]
    records = [record(i, t) for i, (t, _) in enumerate(texts)]
    module.detect(records[:64])  # warm-up: libphonenumber loads its metadata on first use, which the first detector paid
    started = time.perf_counter()
    frame, _ = module.detect(records)
    seconds = time.perf_counter() - started
    if hasattr(module, "redact_records"):
        redacted = [r["messages"][0]["content"] for r in module.redact_records(records)]
    else:  # the previous detector redacted per string in the validate stage
        redacted = [module.redact(t) for t, _ in texts]
    per_type, per_form = {}, {}
    for i, planted in enumerate(pos):
        kind = planted[0]
        rows = [per_type.setdefault(kind, {"n": 0, "reject": 0, "redact": 0})]
        if len(planted) > 4:  # a form measured on its own too
            rows.append(per_form.setdefault(planted[4], {"n": 0, "reject": 0, "redact": 0}))
        for row in rows:
            row["n"] += 1
            row["reject"] += bool(frame[f"pii_{kind.lower()}"].iloc[i])
            row["redact"] += redacted[i] == texts[i][1]
    look_records = [record(i, t) for i, (_, t) in enumerate(looks)]
    lf, _ = module.detect(look_records)
    hit = lf.to_numpy().any(axis=1)
    families, false_types = {}, {}
    for (family, _), flagged, i in zip(looks, hit, range(len(looks))):
        fam = families.setdefault(family, [0, 0])
        fam[0] += 1
        fam[1] += bool(flagged)
        for col in lf.columns[lf.iloc[i].to_numpy()]:
            false_types[col[4:].upper()] = false_types.get(col[4:].upper(), 0) + 1
    cf, _ = module.detect([record(i, q, a) for i, (q, a) in enumerate(clean)])
    clean_hit = cf.to_numpy().any(axis=1)
    for i in clean_hit.nonzero()[0]:
        for col in cf.columns[cf.iloc[i].to_numpy()]:
            false_types[col[4:].upper()] = false_types.get(col[4:].upper(), 0) + 1
    return {"per_type": per_type, "per_form": per_form, "families": families, "false_types": false_types,
            "clean": (len(clean), int(clean_hit.sum())), "seconds": seconds, "rows": len(records)}


def choice_rows(pos, looks, clean) -> list[str]:
    """The library choices, each measured alone: phones (libphonenumber vs the old regex) and key patterns."""
    import pii_previous

    from data_checks import pii

    negatives = [t for _, t in looks] + [f"{q}\n{a}" for q, a in clean]

    def rate(find, kind):
        vals = [(planted_text(k, p), p[1]) for k, p in enumerate(pos) if p[0] == kind]
        found = sum(any(text[s:e] == v for s, e in find(text)) for text, v in vals)
        false = sum(bool(find(t)) for t in negatives)
        return found, len(vals), false

    def regex_spans(pattern):
        return lambda text: [m.span() for m in pattern.finditer(text)]

    own = re.compile(r"(?<![A-Za-z0-9_])(?:" + pii._OWN_KEY_PATTERNS + ")")
    ds = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(p.pattern for p in pii._PROVIDER_PATTERNS) + ")")
    rows = []
    for name, find, kind in [
        ("PHONE: libphonenumber matcher + shape checks (chosen)", lambda t: [(s, e) for s, e, _ in pii._phones(t, [])], "PHONE"),
        ("PHONE: previous hand-written regex", regex_spans(pii_previous.PATTERNS["PHONE"]), "PHONE"),
        ("API_KEY: detect-secrets provider patterns only", regex_spans(ds), "API_KEY"),
        ("API_KEY: own prefix patterns only", regex_spans(own), "API_KEY"),
        ("API_KEY: both (chosen)", regex_spans(pii.API_KEY), "API_KEY"),
    ]:
        found, n, false = rate(find, kind)
        rows.append(f"| {name} | {found}/{n} = {found / n:.1%} | {false} of {len(negatives)} |")
    return rows


def corpus(seed: int, per_type: int, per_family: int, clean: int) -> tuple[list, list, list]:
    """Planted values, look-alikes and clean rows drawn from Faker instances seeded from `seed` (one per locale)."""
    from faker import Faker

    fakers = []
    for k, loc in enumerate(LOCALES):
        fakers.append(Faker(loc))
        fakers[-1].seed_instance(seed + k)
    pos = positives(fakers, per_type) + issue23_positives(fakers, per_type)
    looks = lookalikes(fakers, per_family) + issue23_lookalikes(fakers, per_family)
    return pos, looks, clean_rows(fakers, clean)


def detector_at(checkout: str):
    """data_checks/pii.py of another checkout (e.g. main before a change), loaded beside this one's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pii_baseline", Path(checkout) / "data_checks" / "pii.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pct(hit: int, n: int) -> str:
    return f"{hit / n:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-type", type=int, default=240, help="planted values of each type (and of each issue-23 form)")
    parser.add_argument("--per-family", type=int, default=100, help="look-alikes of each family")
    parser.add_argument("--clean", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[15, 2318],
                        help="corpora to draw; 15 is the one tuned on, the others are held out (never examined while tuning)")
    parser.add_argument("--baseline", help="another checkout whose data_checks/pii.py is measured beside, on the first seed")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import pii_previous
    from data_checks import pii

    draws = [corpus(seed, args.per_type, args.per_family, args.clean) for seed in args.seeds]
    runs = [measure(pii, *draw) for draw in draws]
    before = measure(pii_previous, *draws[0])
    baseline = measure(detector_at(args.baseline), *draws[0]) if args.baseline else None
    now = runs[0]
    seeds = ", ".join(map(str, args.seeds))
    held_out = ", ".join(map(str, args.seeds[1:])) or "none"
    base_name = f"`{args.baseline}`" if args.baseline else ""

    def columns(get) -> str:  # one cell per seed, then the baseline and the previous detector (first seed)
        cells = [f"**{get(r)}**" for r in runs] + ([get(baseline)] if baseline else []) + [get(before)]
        return " | ".join(cells)

    def head(what: str) -> str:
        return " | ".join([f"{what}, seed {x}" for x in args.seeds] + ([f"baseline, seed {args.seeds[0]}"] if baseline else [])
                          + [f"before issue 15, seed {args.seeds[0]}"])

    rule = "|---" * (len(args.seeds) + 3 + bool(baseline)) + "|"
    lines = ["## PII and secrets: recall per type and look-alikes flagged (Faker corpus)", "",
             f"Command: `python bench/pii_corpus.py{' --baseline ' + args.baseline if args.baseline else ''}` (seeds {seeds}; "
             f"per seed {args.per_type} values per type plus {args.per_type} of each issue-23 form, {args.per_family} "
             f"look-alikes per family, {args.clean} clean Q/A rows; Faker {sys.modules['faker'].VERSION}, locales "
             f"{', '.join(LOCALES)}). The corpus is generated afresh by the command; no planted value is printed. "
             f"Seed {args.seeds[0]} is the one the detector was tuned on; seed(s) {held_out} were drawn once, for this "
             "table, and their misses not examined.",
             "", "Reject: `pii.detect` flags the row with the planted type. Redact: the text ingest writes "
             "(`pii.redact_records`) is exactly the sentence with `<TYPE>` in the value's place (whole value, typed "
             "placeholder, nothing else changed). Before issue 15: bench/pii_previous.py (its redact ran in validate, per "
             "string)." + (f" Baseline: data_checks/pii.py of {base_name} (the detector before issue 23)." if baseline else ""),
             "", f"| type | values per seed | {head('reject / redact')} |", rule]

    def recall(row) -> str:
        return f"{_pct(row['reject'], row['n'])} / {_pct(row['redact'], row['n'])}"

    for kind in pii.TYPES:
        lines.append(f"| {kind} | {now['per_type'][kind]['n']} | " + columns(lambda r: recall(r["per_type"][kind])) + " |")
    for form in now["per_form"]:
        lines.append(f"| of which: {form} | {now['per_form'][form]['n']} | "
                     + columns(lambda r: recall(r["per_form"][form])) + " |")
    lines += ["", f"| look-alike family | rows per seed | {head('flagged')} |", rule]
    for fam, (n, _) in now["families"].items():
        lines.append(f"| {fam} | {n} | " + columns(lambda r: _pct(r["families"][fam][1], n)) + " |")
    n_look = sum(n for n, _ in now["families"].values())
    lines.append(f"| **all look-alikes** | {n_look} | "
                 + columns(lambda r: _pct(sum(h for _, h in r["families"].values()), n_look)) + " |")
    lines.append(f"| clean Q/A rows | {now['clean'][0]} | " + columns(lambda r: _pct(r["clean"][1], r["clean"][0])) + " |")
    tp = {k: v["reject"] for k, v in now["per_type"].items()}
    lines += ["", f"Precision per type (reject mode, seed {args.seeds[0]}; false positives are look-alike and clean rows "
              "flagged with that type): " + ", ".join(f"{k} {tp[k] / max(1, tp[k] + now['false_types'].get(k, 0)):.1%}"
                                                      f" ({now['false_types'].get(k, 0)} false)" for k in pii.TYPES) + "."]
    lines += ["", f"Library choices, each measured alone on the seed-{args.seeds[0]} corpus (found: the whole planted value "
              "is one match; false: look-alike and clean rows with any match):", "",
              "| detector | found | false matches |", "|---|---|---|", *choice_rows(*draws[0])]
    lines += ["", f"Detector time, all {now['rows']} planted rows of seed {args.seeds[0]}: {now['seconds']:.2f} s now"
              + (f", {baseline['seconds']:.2f} s baseline" if baseline else "") + f", {before['seconds']:.2f} s before "
              f"issue 15. **CPU:** {cpu()}. Load average {os.getloadavg()[0]:.2f}.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
