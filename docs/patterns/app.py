# app.py: the app every pattern on this page imports
from celery import Celery

from celery_reliable import Reliable

app = Celery("patterns", broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
app.conf.reliable_database_url = "postgresql+psycopg://app@db/shop"
reliable = Reliable(app)
