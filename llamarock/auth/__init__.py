"""Identity and access: SigV4 and bearer authentication, IAM-style policies, quotas and the audit log."""
