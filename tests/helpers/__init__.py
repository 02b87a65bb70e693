"""Shared test helpers: independent reference implementations, the registry's test rows, the
property checks and problems the method tests share, the tiny report-generation configuration,
and the scripts the subprocess tests run. Test files import them as ``helpers.<module>``."""
