"""Compliance: audit reports (daily, GDPR subject access, SOX), the GDPR collectors and anomaly detection. They
read the audit trail together with the domains it is about, so they sit above those domains."""
