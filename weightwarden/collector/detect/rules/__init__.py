"""The detection rules, one module each: each registers itself (detect.registry), so adding a rule is one new file here."""
