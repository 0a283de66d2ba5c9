"""Identity: users, sessions, one-time tokens (password reset, email verification), MFA codes, push devices."""
