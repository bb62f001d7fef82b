"""The whole schema: every capability's tables on the one metadata, for Alembic and the migration test."""
from custody.devices import models as _devices  # noqa: F401  (each import registers its tables)
from custody.eventlog import models as _eventlog  # noqa: F401
from custody.governance import models as _governance  # noqa: F401
from custody.ledger import models as _ledger  # noqa: F401
from custody.mining import models as _mining  # noqa: F401
from custody.people import credential_models as _credentials, models as _people  # noqa: F401
from custody.reserves import models as _reserves  # noqa: F401
from custody.spending import models as _spending  # noqa: F401
from custody.store.base import Base

metadata = Base.metadata
