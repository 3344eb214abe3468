"""Routes of the tenant services beyond generic CRUD, and the Koala web UI's older paths.

  POST /project/{projectId}/record           a project DNS record (201, DnsRecord); domain = the
                                             project's; pushed to the Kiwis of its regions only
  GET  /project/{projectId}/records          ids of the project's DNS records
  POST /project/{projectId}/region/{regionId}/kylo?nfsId=    a Kylo NFS share (kahuna.resources.kylo)
  GET  /project/{projectId}/region/{regionId}/kylos[?nfsId=]  ids of the project's Kylo shares there
  GET|POST /kawaii/{kawaiiId}/ipsec          a Kawaii's IPsec connections (kahuna.resources.kawaii)
  GET|PUT|DELETE /kawaii/{kawaiiId}/ipsec/{kawaiiIpSecId}
                                             the pre-shared key answered in clear to superAdmin
                                             and the project's admins only, masked for others
(Kawaii and Konvey themselves are served by the generic tenant routes.)

Koala (Kowabunga's web UI) still calls pre-0.58 paths; they are aliases, with the very rule and
answer of the route they stand for ("drop-in replacement"):
  GET /region/{regionId}/nfs                 = GET /region/{regionId}/nfses
  GET /nfs/{nfsId}/kylo                      = GET /nfs/{nfsId}/kylos
  GET /project/{projectId}/region/{regionId}/kylo = GET .../kylos (the project's shares in the region)
  PUT /resetPassword                         = POST /resetPassword (served by kahuna.api.session)
"""

from __future__ import annotations

from quart import request

from kahuna.api.infra import child_ids
from kahuna.api.routes import RouteTable, json_body, json_response, target_doc
from kahuna.auth import policy
from kahuna.resources import dns, ipsec_psk, kawaii, kylo
from kahuna.resources.errors import NotFoundError, Unavailable
from kahuna.resources.kind import get_kind
from kahuna.resources.service import Resources
from kahuna.resources.views import present
from kahuna.store import errors as store_errors


def install(table: RouteTable, resources: Resources) -> None:
    _install_records(table, resources)
    _install_kylo(table, resources)
    _install_ipsec(table, resources)
    _install_koala(table, resources)


def _install_records(table: RouteTable, res: Resources) -> None:
    async def create_record(principal, projectId):
        doc = await dns.create_project_record(res, target_doc(), await json_body())
        return json_response(present(dns.RECORD, doc), 201)

    async def list_records(principal, projectId):
        return json_response([d["_id"] for d in await dns.project_records(res, projectId)])

    table.add("/project/{projectId}/record", "POST", "projectAdmin", create_record,
              name="create_project_dns_record")
    table.add("/project/{projectId}/records", "GET", "project", list_records,
              name="list_project_dns_records")


def _install_kylo(table: RouteTable, res: Resources) -> None:
    async def create(principal, projectId, regionId):
        doc = await kylo.create_kylo(res, target_doc(), regionId, request.args.get("nfsId") or None,
                                     await json_body())
        return json_response(present(kylo.KYLO, doc), 201)

    table.add("/project/{projectId}/region/{regionId}/kylo", "POST", "projectAdmin", create,
              name="create_project_region_kylo")


def _install_ipsec(table: RouteTable, res: Resources) -> None:
    """The guard checks the Kawaii (the path's first id); a connection of another Kawaii is 404."""
    kind = kawaii.IPSEC

    async def one(kawaii_id: str, ipsec_id: str) -> dict:
        try:
            doc = await res.get(kind, ipsec_id)
        except NotFoundError:
            raise policy.not_found(kind, ipsec_id) from None
        if doc.get("kawaii_id") != kawaii_id:
            raise policy.not_found(kind, ipsec_id)
        return doc

    async def shown(principal, doc: dict) -> dict:
        project = await res.get("project", target_doc()["project_id"])
        secret = getattr(res.extras.get("secrets"), "server_secret", "")
        return {**present(kind, doc), "pre_shared_key": ipsec_psk.psk_for(principal, project, secret, doc)}

    async def list_ipsecs(principal, kawaiiId):
        return json_response([d["_id"] for d in await res.list(kind, kawaiiId)])

    async def create(principal, kawaiiId):
        doc = await res.create(kind, await json_body(), kawaiiId, principal=principal)
        return json_response(await shown(principal, doc), 201)

    async def read(principal, kawaiiId, kawaiiIpSecId):
        return json_response(await shown(principal, await one(kawaiiId, kawaiiIpSecId)))

    async def update(principal, kawaiiId, kawaiiIpSecId):
        await one(kawaiiId, kawaiiIpSecId)
        doc = await res.update(kind, kawaiiIpSecId, await json_body(), principal=principal)
        return json_response(await shown(principal, doc))

    async def delete(principal, kawaiiId, kawaiiIpSecId):
        await one(kawaiiId, kawaiiIpSecId)
        await res.delete(kind, kawaiiIpSecId, principal=principal)
        return json_response(None)

    access, base = kind.access, "/kawaii/{kawaiiId}/ipsec"
    table.add(base, "GET", access.read, list_ipsecs, name="list_kawaii_ip_secs")
    table.add(base, "POST", access.create, create, name="create_kawaii_ip_sec")
    table.add(base + "/{kawaiiIpSecId}", "GET", access.read, read, name="read_kawaii_ip_sec")
    table.add(base + "/{kawaiiIpSecId}", "PUT", access.update, update, name="update_kawaii_ip_sec")
    table.add(base + "/{kawaiiIpSecId}", "DELETE", access.delete, delete, name="delete_kawaii_ip_sec")


def _install_koala(table: RouteTable, res: Resources) -> None:
    nfs, region = get_kind("nfs"), get_kind("region")

    async def region_nfses(principal, regionId):
        # exactly what the generic GET /region/{regionId}/nfses answers
        docs = await policy.visible(res, principal, nfs.access.read, nfs, await res.list(nfs, regionId))
        return json_response([d["_id"] for d in docs])

    async def nfs_kylos(principal, nfsId):
        return json_response(await child_ids(res, "kylo", "nfs_id", nfsId))

    async def project_region_kylos(principal, projectId, regionId):
        if regionId not in (target_doc().get("region_ids") or ()):
            try:
                await res.get(region, regionId)
            except NotFoundError:
                raise policy.not_found(region, regionId) from None
            return json_response([])
        match = {"project_id": projectId, "region_id": regionId}
        if request.args.get("nfsId"):
            match["nfs_id"] = request.args["nfsId"]
        try:
            docs = await res.store.find("kylo", match, sort="_id")
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None
        return json_response([d["_id"] for d in docs])

    list_rule = nfs.access.read if nfs.access.read in ("admin", "public", "projectCreator") else region.access.read
    table.add("/region/{regionId}/nfs", "GET", list_rule, region_nfses, name="list_region_nfs_koala")
    table.add("/nfs/{nfsId}/kylo", "GET", "admin", nfs_kylos, name="list_storage_nfs_kylo_koala")
    table.add("/project/{projectId}/region/{regionId}/kylos", "GET", "project", project_region_kylos,
              name="list_project_region_kylos")
    table.add("/project/{projectId}/region/{regionId}/kylo", "GET", "project", project_region_kylos,
              name="list_project_region_kylo_koala")
