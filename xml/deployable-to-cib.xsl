<?xml version="1.0" encoding="UTF-8"?>
<!--
  Deployable document -> configuration section of a Pacemaker CIB (crm_feature_set 3.16.1).

  Mapping (see docs and the scheduler reference):
    assembly            -> <node id="uuid" uname="name"/>
    service             -> <primitive id="assembly.service"> with a recurring monitor op,
                           pinned to its assembly (score INFINITY, resource-discovery exclusive)
    class="process"     -> ocf:pcloud:process, the command as an instance attribute
    escalation_failures -> meta migration-threshold; escalation_period -> meta failure-timeout,
                           only with the parameter escalation='1': the DPE escalates by itself
                           and leaves it off; the scenario builder turns it on so the engines'
                           threshold and expiry support stays tested
    target-role='Stopped' (parameter) -> every primitive gets meta target-role=Stopped: the
                           DPE's stop graph (stops in reverse dependency order)
    service_dependency  -> rsc_order (kind Mandatory unless the document says otherwise)
  The placeholder fence device makes Pacemaker fence lost assemblies; it never runs.
  The status section is added by dpe_agent.cib from the observed state.
-->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" indent="yes" encoding="UTF-8"/>
  <xsl:param name="escalation" select="'0'"/>
  <xsl:param name="target-role" select="''"/>

  <xsl:template name="rsc-id">
    <xsl:param name="ref"/>
    <xsl:value-of select="concat(substring-before($ref, ':'), '.', substring-after($ref, ':'))"/>
  </xsl:template>

  <xsl:template match="/deployable">
    <cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0"
         admin_epoch="0">
      <configuration>
        <crm_config>
          <cluster_property_set id="cib-bootstrap-options">
            <nvpair id="opt-symmetric-cluster" name="symmetric-cluster" value="false"/>
            <nvpair id="opt-no-quorum-policy" name="no-quorum-policy" value="ignore"/>
            <nvpair id="opt-start-failure-is-fatal" name="start-failure-is-fatal" value="false"/>
            <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="true"/>
          </cluster_property_set>
        </crm_config>
        <nodes>
          <xsl:for-each select="assemblies/assembly">
            <node uname="{@name}">
              <xsl:attribute name="id">
                <xsl:choose>
                  <xsl:when test="@uuid"><xsl:value-of select="@uuid"/></xsl:when>
                  <xsl:otherwise><xsl:value-of select="@name"/></xsl:otherwise>
                </xsl:choose>
              </xsl:attribute>
            </node>
          </xsl:for-each>
        </nodes>
        <resources>
          <primitive id="fence_vm" class="stonith" type="fence_vm"/>
          <xsl:apply-templates select="assemblies/assembly/services/service" mode="primitive"/>
        </resources>
        <constraints>
          <rsc_location id="loc_fence_vm" rsc="fence_vm" resource-discovery="never">
            <rule id="r" score="-INFINITY">
              <expression id="e" attribute="#uname" operation="defined"/>
            </rule>
          </rsc_location>
          <xsl:for-each select="assemblies/assembly/services/service">
            <xsl:variable name="id" select="concat(../../@name, '.', @name)"/>
            <rsc_location id="loc-{$id}" rsc="{$id}" node="{../../@name}" score="INFINITY"
                          resource-discovery="exclusive"/>
          </xsl:for-each>
          <xsl:for-each select="constraints/service_dependency">
            <rsc_order id="order-{@id}">
              <xsl:attribute name="first">
                <xsl:call-template name="rsc-id"><xsl:with-param name="ref" select="@first"/></xsl:call-template>
              </xsl:attribute>
              <xsl:attribute name="then">
                <xsl:call-template name="rsc-id"><xsl:with-param name="ref" select="@then"/></xsl:call-template>
              </xsl:attribute>
              <xsl:attribute name="kind">
                <xsl:choose>
                  <xsl:when test="@kind = 'optional' or @kind = 'Optional'">Optional</xsl:when>
                  <xsl:otherwise>Mandatory</xsl:otherwise>
                </xsl:choose>
              </xsl:attribute>
            </rsc_order>
          </xsl:for-each>
        </constraints>
      </configuration>
      <status/>
    </cib>
  </xsl:template>

  <xsl:template match="service" mode="primitive">
    <xsl:variable name="id" select="concat(../../@name, '.', @name)"/>
    <primitive id="{$id}">
      <xsl:choose>
        <xsl:when test="@class = 'process'">
          <xsl:attribute name="class">ocf</xsl:attribute>
          <xsl:attribute name="provider">pcloud</xsl:attribute>
          <xsl:attribute name="type">process</xsl:attribute>
        </xsl:when>
        <xsl:otherwise>
          <xsl:attribute name="class"><xsl:value-of select="@class"/></xsl:attribute>
          <xsl:if test="@provider">
            <xsl:attribute name="provider"><xsl:value-of select="@provider"/></xsl:attribute>
          </xsl:if>
          <xsl:attribute name="type"><xsl:value-of select="@type"/></xsl:attribute>
        </xsl:otherwise>
      </xsl:choose>
      <xsl:variable name="escalates"
                    select="$escalation = '1' and (@escalation_failures or @escalation_period)"/>
      <xsl:if test="$escalates or $target-role != ''">
        <meta_attributes id="{$id}-meta">
          <xsl:if test="$escalates and @escalation_failures">
            <nvpair id="{$id}-meta-migration-threshold" name="migration-threshold"
                    value="{@escalation_failures}"/>
          </xsl:if>
          <xsl:if test="$escalates and @escalation_period">
            <nvpair id="{$id}-meta-failure-timeout" name="failure-timeout"
                    value="{@escalation_period}s"/>
          </xsl:if>
          <xsl:if test="$target-role != ''">
            <nvpair id="{$id}-meta-target-role" name="target-role" value="{$target-role}"/>
          </xsl:if>
        </meta_attributes>
      </xsl:if>
      <xsl:if test="parameters/parameter">
        <instance_attributes id="{$id}-params">
          <xsl:for-each select="parameters/parameter">
            <nvpair id="{$id}-params-{position()}" name="{@name}" value="{@value}"/>
          </xsl:for-each>
        </instance_attributes>
      </xsl:if>
      <operations>
        <op id="{$id}-monitor" name="monitor"
            interval="{round(number(concat('0', @monitor_interval)) * 1000)}ms">
          <xsl:if test="not(@monitor_interval)">
            <xsl:attribute name="interval">10000ms</xsl:attribute>
          </xsl:if>
        </op>
      </operations>
    </primitive>
  </xsl:template>
</xsl:stylesheet>
