"""Outputs stored by an older collector, brought to the present form: files read once, secrets sealed.

Older outputs named files on the collector host (``ca=``, ``cert=``, ``key=``,
``password_file=``), kept the webhook secret in clear, and an MQTT output with
no password of its own borrowed the collector's. The dispatcher does not use
such an output any more; this rewrites it, on the collector host, by the
operator: a plan first (:func:`plan`: which files each would read, which
destination is local), then, for the outputs the operator names, the rewrite
(files read now by the operator's command, their contents stored; secrets
sealed; the URL without a password). A file an output names is read only when
the operator has seen the plan and named that output: an admin over the API
could have named any file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.base import OutputConfigError
from weightwarden.collector.outputs.receivers import configure, kind_of
from weightwarden.collector.outputs.vault import SecretBox, SecretsError
from weightwarden.collector.store.audit import record
from weightwarden.collector.store.database import Store
from weightwarden.jsontypes import JsonObject
from weightwarden.mqtt import redact

FILES = {"ca": "ca_pem", "cert": "cert_pem", "key": "key_pem", "password_file": "password"}


def _legacy_parts(o: outbox.StoredOutput) -> tuple[str, dict[str, str], JsonObject, list[str]]:
    """(the URL to configure, files to read {option: path}, plain options, notes)."""
    parts = urlsplit(o.spec.url)
    scheme = parts.scheme
    # A webhook's query string is the receiver's own (tokens); syslog and MQTT took options there.
    query = {} if scheme.startswith("http") else \
        {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    files: dict[str, str] = {}
    options: JsonObject = {}
    notes: list[str] = []
    keep_query: dict[str, str] = {}
    for key, value in {**query, **o.spec.options}.items():
        if key in FILES:
            files[FILES[key]] = str(value)
        elif key in ("format", "hostname") and scheme.startswith("syslog+"):
            options[key] = value
        elif key == "keepalive" and scheme.startswith("mqtt"):
            keep_query[key] = str(value)
        elif key == "secret" and scheme.startswith("http"):
            options[key] = value
        else:
            notes.append(f"{key}= dropped (outputs do not take it)")
    new_query = parts.query if scheme.startswith("http") else urlencode(keep_query)
    url = urlunsplit((scheme, parts.netloc, parts.path, new_query, ""))
    if scheme.startswith("mqtt") and not parts.password and "password" not in files:
        notes.append("it had no password of its own (it used the collector's broker password): give it its own "
                     "account (outputs add --password-file) or it connects without one")
    return url, files, options, notes


class Step(TypedDict):
    """What migrating one legacy output would do: the URL it keeps, the files it would read, what it drops."""

    name: str
    url: str
    reads: dict[str, str]
    notes: list[str]


class Result(TypedDict):
    name: str
    ok: bool
    result: str


def plan(store: Store) -> list[Step]:
    """What :func:`migrate` would do to each legacy output; changes nothing."""
    with store.tx() as conn:
        legacy = [o for o in outbox.outputs(conn) if o.legacy]
    out: list[Step] = []
    for o in legacy:
        url, files, _options, notes = _legacy_parts(o)
        out.append({"name": o.name, "url": redact(url), "reads": files, "notes": notes})
    return out


def migrate(store: Store, box: SecretBox, names: set[str], allow_local: set[str], operator: str,
            now: float) -> list[Result]:
    """Rewrite the named legacy outputs; one result each ({name, ok, result})."""
    results: list[Result] = []
    with store.tx() as conn:
        legacy = {o.name: o for o in outbox.outputs(conn) if o.legacy}
    for name in sorted(names):
        o = legacy.get(name)
        if o is None:
            results.append({"name": name, "ok": False, "result": "no output of that name stored by an older "
                                                                  "collector"})
            continue
        url, files, options, notes = _legacy_parts(o)
        try:
            for option, path in files.items():
                with Path(path).open(encoding="utf-8") as fh:
                    options[option] = fh.read().strip() if option == "password" else fh.read()
            if name in allow_local:
                options["allow_local"] = True
            kind_of(url)
            spec = configure(name, url, options, box, local_ok=True, audit=o.spec.audit)
        except (OSError, UnicodeDecodeError) as exc:
            results.append({"name": name, "ok": False, "result": f"cannot read a file it names: {exc}"})
            continue
        except (OutputConfigError, SecretsError) as exc:
            results.append({"name": name, "ok": False, "result": str(exc)})
            continue
        with store.tx() as conn:
            outbox.add_output(conn, spec, now)
            record(conn, user=operator, action="output_migrate", target=name, via="cli", source="cli", now=now,
                   detail=f"read {', '.join(sorted(files.values())) or 'no file'}; sealed "
                          f"{', '.join(sorted(spec.secrets)) or 'nothing'}")
        results.append({"name": name, "ok": True, "result": "migrated" + (": " + "; ".join(notes) if notes else "")})
    return results


__all__ = ["migrate", "plan"]
