import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quorum.settings")
django_application = get_wsgi_application()
# Import every view now (NumPy, pandas, numba, scikit-learn: seconds), not on a worker's first
# request: granian imports this module in each worker as it starts.
get_resolver().url_patterns  # noqa: B018 - the access imports the views

from labeling.api.crowd_lane import CrowdLane  # noqa: E402 - needs the apps loaded above

# The crowd loop's token requests are answered in front of Django's handler (see crowd_lane).
application = CrowdLane(django_application)
