"""User and project routes beyond generic CRUD, as the official client 0.58 sends them.

  PUT   /user/{userId}/password          set a chosen password (≥ 70 bits; may be disabled)
  PATCH /user/{userId}/resetPassword     mail a password-reset link to the user
  PATCH /user/{userId}/token?expire=&expirationDate=   rotate the user's API key (mailed)
  GET   /project/{projectId}/cost        the project's cost (from its instances and volumes now)
  GET   /project/{projectId}/usage       the project's resource usage
"""

from __future__ import annotations

from quart import request

from kahuna.api.routes import RouteTable, json_body, json_response, target_doc, token_expiration
from kahuna.auth import passwords
from kahuna.resources import identity
from kahuna.resources.cost import project_cost
from kahuna.resources.errors import Forbidden, Invalid
from kahuna.resources.types import Field, Str, check_object
from kahuna.resources.views import present

_PASSWORD = (Field("value", Str(min_len=1, max_len=passwords.MAX_LENGTH * 4), required=True),)


def install(table: RouteTable, resources) -> None:
    config = resources.config

    async def set_password(principal, userId):
        if not config.accounts.allow_user_chosen_passwords:
            raise Forbidden("user-chosen passwords are disabled on this Kahuna "
                            "(global.passwords.allowUserChosen); use resetPassword")
        body = await json_body()
        if not isinstance(body, dict):
            raise Invalid("request body must be a JSON object")
        value = check_object(_PASSWORD, body, "", partial=False)["value"]
        passwords.check_chosen(value)
        user = target_doc()
        keep = principal.session_id if principal.user_id == user["_id"] else None
        await identity.set_password(resources, user, value, keep_session=keep)
        return json_response(None)

    async def reset_user_password(principal, userId):
        await identity.start_password_reset(resources, target_doc())
        return json_response(None)

    async def set_token(principal, userId):
        expire, expiration = token_expiration("expire", "expirationDate", "expiration_date")
        token = await identity.rotate_user_key(resources, target_doc(), expire, expiration)
        return json_response(present("token", token))

    async def cost(principal, projectId):
        return json_response(await project_cost(resources, target_doc()["_id"]))

    async def usage(principal, projectId):
        return json_response(identity.project_usage(target_doc()))

    table.add("/user/{userId}/password", "PUT", "own", set_password, name="set_user_password")
    table.add("/user/{userId}/resetPassword", "PATCH", "own", reset_user_password, name="reset_user_password")
    table.add("/user/{userId}/token", "PATCH", "own", set_token, name="set_user_api_token")
    table.add("/project/{projectId}/cost", "GET", "project", cost, name="read_project_cost")
    table.add("/project/{projectId}/usage", "GET", "project", usage, name="read_project_usage")
