# shop.py: a Flask app, Flask-SQLAlchemy and celery_reliable on one database
from celery import Celery
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from celery_reliable import Reliable, ReliableTask

DATABASE_URL = "postgresql+psycopg://app@db/shop"  # one database: your tables and the store's


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Order(db.Model):  # type: ignore[name-defined]
    id: Mapped[int] = mapped_column(primary_key=True)
    total_cents: Mapped[int]


flask_app = Flask(__name__)
flask_app.config["SQLALCHEMY_DATABASE_URI"] = DATABASE_URL
db.init_app(flask_app)

celery_app = Celery("shop", broker="redis://127.0.0.1:6379/0")
celery_app.conf.reliable_database_url = DATABASE_URL
reliable = Reliable(celery_app)


@celery_app.task(base=ReliableTask, bind=True)
def charge(self: ReliableTask, order_id: int, total_cents: int) -> None:
    with self.transaction() as session:  # the store's engine: the same database
        session.get(Order, order_id)  # ... charge it, record the payment


@flask_app.post("/orders/<int:total_cents>")
def place_order(total_cents: int) -> dict[str, int]:
    order = Order(total_cents=total_cents)
    db.session.add(order)
    db.session.flush()  # the order's id
    reliable.outbox.enqueue(
        db.session, charge.s(order.id, total_cents), message_id=f"order-{order.id}-charge"
    )
    db.session.commit()  # the order and its message, or neither
    return {"order": order.id}
