"""The people who hold roles (admins, officers, signatories, auditors, viewers) and their approval keys."""
